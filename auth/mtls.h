/*
 * mtls — the client certificate of a request's TLS connection, verified by OpenSSL
 * against the listener's client_ca_file during the handshake. Its identity is the
 * subject CN and the SHA-256 thumbprint of the DER certificate.
 */
#ifndef AOR_MTLS_H
#define AOR_MTLS_H

#include <stddef.h>
#include <h2o.h>

/* "cert:" + CN must be a tenant name (tenant.h): 128 - 5 */
#define AOR_MTLS_CN_MAX 123

struct aor_mtls_identity {
    char cn[AOR_MTLS_CN_MAX + 1]; /* subject CN when it can name a tenant, else "" */
    int cn_refused;               /* 1: the certificate has a CN that cannot name a tenant (see mtls.c take_cn) */
    char thumbprint[65];          /* lower-case hex SHA-256 of the DER certificate */
};

/*
 * 1 and *out filled when the connection is TLS and carried a certificate that verified; 0 otherwise.
 * A CN is taken only when the subject holds exactly one, of 1..AOR_MTLS_CN_MAX bytes of the tenant
 * rule (no NUL, no byte outside [A-Za-z0-9._:@-], never cut), and not 16 hex digits (the thumbprint
 * form); otherwise cn is "" and cn_refused 1.
 */
int aor_mtls_identity(h2o_req_t *req, struct aor_mtls_identity *out);

#endif
