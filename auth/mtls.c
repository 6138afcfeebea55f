/*
 * mtls.c — see mtls.h. h2o 2.2.5 does not export the SSL object of a socket; its
 * private struct st_h2o_socket_ssl_t starts with { SSL_CTX *ssl_ctx; SSL *ossl; } in
 * every 2.2.x release, which is all this file relies on (checked against 2.2.5's
 * lib/common/socket.c). Upgrading h2o means re-checking this layout.
 */
#include <stdio.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include "mtls.h"

struct st_h2o_socket_ssl_t {
    SSL_CTX *ssl_ctx;
    SSL *ossl;
};

int aor_mtls_identity(h2o_req_t *req, struct aor_mtls_identity *out)
{
    h2o_socket_t *sock = req->conn->callbacks->get_socket != NULL ? req->conn->callbacks->get_socket(req->conn) : NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0, i;
    X509 *cert;
    int ok = 0;

    if (sock == NULL || sock->ssl == NULL || sock->ssl->ossl == NULL)
        return 0;
    if ((cert = SSL_get1_peer_certificate(sock->ssl->ossl)) == NULL)
        return 0;
    if (SSL_get_verify_result(sock->ssl->ossl) == X509_V_OK && X509_digest(cert, EVP_sha256(), md, &mdlen) == 1) {
        X509_NAME *subject = X509_get_subject_name(cert);
        out->cn[0] = '\0';
        if (subject != NULL && X509_NAME_get_text_by_NID(subject, NID_commonName, out->cn, sizeof(out->cn)) < 0)
            out->cn[0] = '\0';
        for (i = 0; i != mdlen && i < 32; ++i)
            snprintf(out->thumbprint + i * 2, 3, "%02x", md[i]);
        ok = 1;
    }
    X509_free(cert);
    return ok;
}
