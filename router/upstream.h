/*
 * upstream — libcurl's multi-socket interface driven by a worker's uv loop: every
 * outbound HTTP call (backends, and later IMDS, Entra ID, JWKS) is a transfer on it.
 * One per worker thread; connections and DNS results are kept per worker and reused.
 */
#ifndef AOR_UPSTREAM_H
#define AOR_UPSTREAM_H

#include <curl/curl.h>
#include <uv.h>

struct aor_upstream;
struct aor_upstream_xfer;

/* called once when a started transfer ends (result CURLE_OK or an error); the easy
 * handle has been removed from the multi handle and may be reused or released */
typedef void (*aor_upstream_done_cb)(struct aor_upstream_xfer *xfer, CURLcode result);

/* embed in the caller's object; `easy` belongs to the transfer from acquire to release */
struct aor_upstream_xfer {
    CURL *easy;
    aor_upstream_done_cb on_done;
    int active; /* between start and done/cancel */
};

struct aor_upstream *aor_upstream_create(uv_loop_t *loop);
/* cancels every transfer (their callbacks are not called) and frees the handles after the loop closes them */
void aor_upstream_destroy(struct aor_upstream *up);

/* an easy handle from the worker's free list, options reset, NOSIGNAL set. NULL on ENOMEM */
CURL *aor_upstream_acquire(struct aor_upstream *up);
void aor_upstream_release(struct aor_upstream *up, CURL *easy);

/**
 * Starts `xfer` (xfer->easy configured by the caller, xfer->on_done set). Returns 0,
 * or -1 if curl refused the handle (the callback is then never called). The callback
 * never runs before this returns.
 */
int aor_upstream_start(struct aor_upstream *up, struct aor_upstream_xfer *xfer);

/* stops an active transfer; its callback is not called. Safe on an inactive xfer. */
void aor_upstream_cancel(struct aor_upstream *up, struct aor_upstream_xfer *xfer);

#endif
