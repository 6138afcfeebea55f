/*
 * mtls — the client certificate of a request's TLS connection, verified by OpenSSL
 * against the listener's client_ca_file during the handshake. Its identity is the
 * subject CN and the SHA-256 thumbprint of the DER certificate.
 */
#ifndef AOR_MTLS_H
#define AOR_MTLS_H

#include <stddef.h>
#include <h2o.h>

struct aor_mtls_identity {
    char cn[256];        /* subject CN, "" if the certificate has none */
    char thumbprint[65]; /* lower-case hex SHA-256 of the DER certificate */
};

/* 1 and *out filled when the connection is TLS and carried a certificate that verified; 0 otherwise */
int aor_mtls_identity(h2o_req_t *req, struct aor_mtls_identity *out);

#endif
