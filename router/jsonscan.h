/*
 * jsonscan — reads the top-level members of a JSON object without building a tree
 * or allocating: the request fields the router needs (model, stream, max_tokens) and
 * the reply's usage. Validates the whole document's syntax (RFC 8259 grammar;
 * UTF-8 is not checked) with nesting bounded by AOR_JSON_MAX_DEPTH. Pure, fuzzed.
 */
#ifndef AOR_JSONSCAN_H
#define AOR_JSONSCAN_H

#include <stddef.h>
#include <stdint.h>

#define AOR_JSON_MAX_DEPTH 64

/* one top-level member; `key` is the raw bytes between the quotes (escapes not decoded),
 * `value` spans the value's text exactly (strings include their quotes) */
typedef int (*aor_json_member_cb)(const char *key, size_t key_len, const char *value, size_t value_len, void *data);

/**
 * Calls `cb` for each top-level member of the object in s[0..len), in order. A callback
 * returning non-zero stops the scan, and that value is returned. Returns 0 when the
 * whole input is one well-formed object (surrounding whitespace allowed), -1 when not.
 */
int aor_json_scan_object(const char *s, size_t len, aor_json_member_cb cb, void *data);

/* a value span that is a JSON integer in int64 range → 1 and *out; else 0 */
int aor_json_int(const char *value, size_t len, int64_t *out);
/* a value span that is a string without escapes → 1 and the inner bytes; else 0 */
int aor_json_plain_string(const char *value, size_t len, const char **inner, size_t *inner_len);

#endif
