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
#include "tenant.h"

struct st_h2o_socket_ssl_t {
    SSL_CTX *ssl_ctx;
    SSL *ossl;
};

/*
 * The subject's CN as a tenant name, or 1 when there is a CN that cannot be one: embedded NUL
 * (X509_NAME_get_text_by_NID would cut "a\0b" to "a", another certificate's tenant), a byte
 * outside the tenant rule, longer than AOR_MTLS_CN_MAX (never cut: cutting makes collisions),
 * more than one CN, or a CN of 16 hex digits, which would read as the thumbprint form.
 * 0 with cn "" when there is no CN.
 */
static int take_cn(X509_NAME *subject, char cn[AOR_MTLS_CN_MAX + 1])
{
    int idx, len, hex = 0;
    const unsigned char *data;
    ASN1_STRING *v;

    if (subject == NULL || (idx = X509_NAME_get_index_by_NID(subject, NID_commonName, -1)) < 0)
        return 0;
    if (X509_NAME_get_index_by_NID(subject, NID_commonName, idx) >= 0)
        return 1;
    if ((v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, idx))) == NULL)
        return 1;
    /* the rule's alphabet is ASCII: a string type whose bytes are not ASCII text cannot match it */
    switch (ASN1_STRING_type(v)) {
    case V_ASN1_UTF8STRING:
    case V_ASN1_PRINTABLESTRING:
    case V_ASN1_IA5STRING:
    case V_ASN1_T61STRING:
        break;
    default:
        return 1;
    }
    data = ASN1_STRING_get0_data(v);
    len = ASN1_STRING_length(v);
    if (data == NULL || len < 1 || len > AOR_MTLS_CN_MAX || !aor_tenant_name_ok((const char *)data, (size_t)len))
        return 1;
    for (idx = 0; idx != len; ++idx)
        hex += (data[idx] >= '0' && data[idx] <= '9') || (data[idx] >= 'a' && data[idx] <= 'f');
    if (len == 16 && hex == 16)
        return 1;
    memcpy(cn, data, (size_t)len);
    cn[len] = '\0';
    return 0;
}

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
        out->cn[0] = '\0';
        out->cn_refused = take_cn(X509_get_subject_name(cert), out->cn);
        for (i = 0; i != mdlen && i < 32; ++i)
            snprintf(out->thumbprint + i * 2, 3, "%02x", md[i]);
        ok = 1;
    }
    X509_free(cert);
    return ok;
}
