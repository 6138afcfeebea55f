/*
 * test_jwks.c — keystores on a real uv loop against a loopback IdP (python3's http.server
 * serving discovery + JWKS files from a temp dir the test rewrites): initial fetch, issuer
 * mismatch refused, rotation (a new kid appears, the dropped one disappears), refetch cooldown
 * under a flood from another thread, single flight, body size at the limit and limit+1, HTTP
 * errors and the IdP going down (last good keys keep serving), Cache-Control max-age bounds;
 * secret and jwks_file keystores; the registry across reloads; aor_jwt_peek_issuer.
 * Keys are fresh EC P-256 keys; tokens are signed here and checked with aor_jwt_verify.
 * Exits 77 (skip) when python3 cannot be started.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <curl/curl.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <uv.h>
#include "config.h"
#include "jwk.h"
#include "jwks.h"
#include "jwt.h"
#include "log.h"
#include "upstream.h"
#include "test.h"

#define ISS "https://idp.test/tenant-1/v2.0"
#define AUD "api://test"

/* serves argv[1]; prints its port; /slow/... answers after 1.5 s; a file "cache-control" adds that header */
static const char server_py[] =
    "import http.server, os, sys, time\n"
    "d = sys.argv[1]\n"
    "class H(http.server.SimpleHTTPRequestHandler):\n"
    "    def __init__(s, *a, **k):\n"
    "        super().__init__(*a, directory=d, **k)\n"
    "    def do_GET(s):\n"
    "        if s.path.startswith('/slow/'):\n"
    "            time.sleep(1.5)\n"
    "            s.path = s.path[5:]\n"
    "        super().do_GET()\n"
    "    def end_headers(s):\n"
    "        try:\n"
    "            s.send_header('Cache-Control', open(os.path.join(d, 'cache-control')).read().strip())\n"
    "        except OSError:\n"
    "            pass\n"
    "        super().end_headers()\n"
    "    def log_message(s, *a):\n"
    "        pass\n"
    "http.server.ThreadingHTTPServer.daemon_threads = True\n"
    "srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)\n"
    "print(srv.server_address[1], flush=True)\n"
    "srv.serve_forever()\n";

static uv_loop_t loop;
static uv_timer_t tick;
static struct aor_upstream *up;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* runs the loop (woken at least every 10 ms by `tick`) until cond holds or ms pass; the value of cond */
#define RUN_UNTIL(cond, ms)                                                                                                        \
    ({                                                                                                                             \
        uint64_t end_ = mono_ms() + (ms);                                                                                          \
        int ok_;                                                                                                                   \
        while (!(ok_ = (cond)) && mono_ms() < end_)                                                                                \
            uv_run(&loop, UV_RUN_ONCE);                                                                                            \
        ok_;                                                                                                                       \
    })

static void run_for(uint64_t ms)
{
    RUN_UNTIL(0, ms);
}

static char *xprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

static char *b64url(const void *data, size_t n)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = data;
    char *out = malloc(n / 3 * 4 + 5), *o = out;
    size_t i;

    for (i = 0; i + 3 <= n; i += 3) {
        *o++ = abc[p[i] >> 2];
        *o++ = abc[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
        *o++ = abc[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)];
        *o++ = abc[p[i + 2] & 63];
    }
    if (n - i == 1) {
        *o++ = abc[p[i] >> 2];
        *o++ = abc[(p[i] & 3) << 4];
    } else if (n - i == 2) {
        *o++ = abc[p[i] >> 2];
        *o++ = abc[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
        *o++ = abc[(p[i + 1] & 15) << 2];
    }
    *o = '\0';
    return out;
}

static void write_file(const char *dir, const char *name, const char *content, size_t len)
{
    char *path = xprintf("%s/%s", dir, name), *tmp = xprintf("%s.tmp", path);
    FILE *fp = fopen(tmp, "wb");

    if (fp == NULL || fwrite(content, 1, len, fp) != len || fclose(fp) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
        abort();
    }
    free(tmp);
    free(path);
}

static void write_str(const char *dir, const char *name, const char *content)
{
    write_file(dir, name, content, strlen(content));
}

static void remove_file(const char *dir, const char *name)
{
    char *path = xprintf("%s/%s", dir, name);
    unlink(path);
    free(path);
}

static void make_dir(const char *dir, const char *name)
{
    char *path = xprintf("%s/%s", dir, name);
    mkdir(path, 0700);
    free(path);
}

/* ---- the loopback IdP ------------------------------------------------------------------- */

struct idp {
    pid_t pid;
    int port;
    char dir[64];
};

static int idp_start(struct idp *idp)
{
    int fds[2];
    char line[32];
    ssize_t n;
    size_t got = 0;

    snprintf(idp->dir, sizeof(idp->dir), "/tmp/aor-jwks-XXXXXX");
    if (mkdtemp(idp->dir) == NULL || pipe(fds) != 0)
        return -1;
    if ((idp->pid = fork()) == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execlp("python3", "python3", "-u", "-c", server_py, idp->dir, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    while (got < sizeof(line) - 1 && (n = read(fds[0], line + got, sizeof(line) - 1 - got)) > 0) {
        got += (size_t)n;
        if (memchr(line, '\n', got) != NULL)
            break;
    }
    close(fds[0]);
    line[got] = '\0';
    idp->port = atoi(line);
    return idp->pid > 0 && idp->port > 0 ? 0 : -1;
}

static void idp_stop(struct idp *idp)
{
    if (idp->pid > 0) {
        kill(idp->pid, SIGTERM);
        waitpid(idp->pid, NULL, 0);
        idp->pid = 0;
    }
}

static void idp_cleanup(struct idp *idp)
{
    char *cmd = xprintf("rm -rf '%s'", idp->dir);
    idp_stop(idp);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", idp->dir);
    free(cmd);
}

static char *url(const struct idp *idp, const char *path)
{
    return xprintf("http://127.0.0.1:%d%s", idp->port, path);
}

/* ---- keys and tokens ------------------------------------------------------------------- */

struct tkey {
    EVP_PKEY *pk;
    const char *kid;
};

static struct tkey key_a, key_b, key_c;

static struct tkey new_key(const char *kid)
{
    struct tkey k = {EVP_EC_gen("P-256"), kid};
    if (k.pk == NULL)
        abort();
    return k;
}

static char *coord(EVP_PKEY *pk, const char *param)
{
    BIGNUM *bn = NULL;
    unsigned char buf[32];
    char *s;

    if (EVP_PKEY_get_bn_param(pk, param, &bn) != 1 || BN_bn2binpad(bn, buf, 32) != 32)
        abort();
    BN_free(bn);
    s = b64url(buf, 32);
    return s;
}

static char *jwk(const struct tkey *k)
{
    char *x = coord(k->pk, OSSL_PKEY_PARAM_EC_PUB_X), *y = coord(k->pk, OSSL_PKEY_PARAM_EC_PUB_Y);
    char *s =
        xprintf("{\"kty\":\"EC\",\"crv\":\"P-256\",\"use\":\"sig\",\"alg\":\"ES256\",\"kid\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"}",
                k->kid, x, y);
    free(x);
    free(y);
    return s;
}

/* {"keys":[...]} of up to three keys (NULL ends the list), left-padded with spaces to `pad_to` bytes */
static char *jwks_doc(const struct tkey *k1, const struct tkey *k2, size_t pad_to)
{
    char *a = k1 != NULL ? jwk(k1) : NULL, *b = k2 != NULL ? jwk(k2) : NULL;
    char *doc = xprintf("{\"keys\":[%s%s%s]}", a != NULL ? a : "", a != NULL && b != NULL ? "," : "", b != NULL ? b : "");
    size_t len = strlen(doc);

    free(a);
    free(b);
    if (pad_to > len) {
        char *padded = malloc(pad_to + 1);
        memset(padded, ' ', pad_to - len);
        memcpy(padded + pad_to - len, doc, len + 1);
        free(doc);
        doc = padded;
    }
    return doc;
}

static void serve_jwks(const struct idp *idp, const char *name, const struct tkey *k1, const struct tkey *k2, size_t pad_to)
{
    char *doc = jwks_doc(k1, k2, pad_to);
    write_str(idp->dir, name, doc);
    free(doc);
}

static char *claims_json(const char *iss)
{
    long now = (long)time(NULL);
    return xprintf("{\"iss\":\"%s\",\"aud\":\"%s\",\"iat\":%ld,\"exp\":%ld,\"tid\":\"tenant-1\",\"sub\":\"user-1\"}", iss, AUD, now,
                   now + 600);
}

static char *es256_token(const struct tkey *k, const char *iss)
{
    char *h = xprintf("{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", k->kid), *c = claims_json(iss);
    char *hb = b64url(h, strlen(h)), *cb = b64url(c, strlen(c)), *input = xprintf("%s.%s", hb, cb), *sb, *tok;
    unsigned char der[128], raw[64];
    const unsigned char *p = der;
    size_t der_len = sizeof(der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    ECDSA_SIG *sig;
    const BIGNUM *r, *s;

    if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k->pk) != 1 ||
        EVP_DigestSign(md, der, &der_len, (const unsigned char *)input, strlen(input)) != 1 ||
        (sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len)) == NULL)
        abort();
    ECDSA_SIG_get0(sig, &r, &s);
    BN_bn2binpad(r, raw, 32);
    BN_bn2binpad(s, raw + 32, 32);
    sb = b64url(raw, 64);
    tok = xprintf("%s.%s", input, sb);
    ECDSA_SIG_free(sig);
    EVP_MD_CTX_free(md);
    free(h);
    free(c);
    free(hb);
    free(cb);
    free(input);
    free(sb);
    return tok;
}

static char *hs_token(const char *alg, const EVP_MD *mdt, const char *secret, const char *iss)
{
    char *h = xprintf("{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg), *c = claims_json(iss);
    char *hb = b64url(h, strlen(h)), *cb = b64url(c, strlen(c)), *input = xprintf("%s.%s", hb, cb), *sb, *tok;
    unsigned char mac[64];
    unsigned int mac_len = 0;

    if (HMAC(mdt, secret, (int)strlen(secret), (const unsigned char *)input, strlen(input), mac, &mac_len) == NULL)
        abort();
    sb = b64url(mac, mac_len);
    tok = xprintf("%s.%s", input, sb);
    free(h);
    free(c);
    free(hb);
    free(cb);
    free(input);
    free(sb);
    return tok;
}

/* aor_jwt_verify with the keystore's current keys; -100 when it has none */
static int verify(struct aor_keystore *ks, const char *token, const char *iss, uint32_t algs, int *unknown_kid)
{
    static const char *const auds[] = {AUD};
    static const char *const tclaims[] = {"tid"};
    struct aor_jwt_policy pol = {iss, auds, 1, NULL, 0, tclaims, 1, 60, 0, algs};
    struct aor_jwt_result res;
    struct aor_jwks *set = aor_keystore_current(ks);
    int rc;

    if (set == NULL)
        return -100;
    rc = aor_jwt_verify(token, strlen(token), set, &pol, (int64_t)time(NULL), &res);
    aor_jwks_release(set);
    if (unknown_kid != NULL)
        *unknown_kid = res.unknown_kid;
    if (rc == 0)
        CHECK_EQ_STR(res.tenant, "tenant-1");
    return rc;
}

static int verify_es(struct aor_keystore *ks, const struct tkey *k)
{
    char *tok = es256_token(k, ISS);
    int rc = verify(ks, tok, ISS, AOR_JWK_ALG_BIT(AOR_JWK_ES256), NULL);
    free(tok);
    return rc;
}

static struct aor_keystore_stats stats_of(struct aor_keystore *ks)
{
    struct aor_keystore_stats st;
    aor_keystore_stats(ks, &st);
    return st;
}

/* fetches that ended, successfully or not */
static uint64_t ended(struct aor_keystore *ks)
{
    struct aor_keystore_stats st = stats_of(ks);
    return st.updates + st.failures;
}

static struct aor_jwt_issuer_conf issuer_conf(const char *iss, const char *openid_config, const char *jwks_uri, unsigned cooldown)
{
    struct aor_jwt_issuer_conf ic;

    memset(&ic, 0, sizeof(ic));
    ic.issuer = (char *)iss;
    ic.openid_config = (char *)openid_config;
    ic.jwks_uri = (char *)jwks_uri;
    ic.jwks_refetch_cooldown_s = cooldown;
    return ic;
}

static void write_discovery(const struct idp *idp, const char *subdir, const char *iss, const char *jwks_uri)
{
    char *doc = xprintf("{\"issuer\":\"%s\",\"jwks_uri\":\"%s\",\"id_token_signing_alg_values_supported\":[\"ES256\"],"
                        "\"response_types_supported\":[\"code\"]}",
                        iss, jwks_uri);
    char *dir = xprintf("%s%s", subdir, "/.well-known");
    char *name = xprintf("%s/openid-configuration", dir);

    make_dir(idp->dir, subdir);
    make_dir(idp->dir, dir);
    write_str(idp->dir, name, doc);
    free(doc);
    free(dir);
    free(name);
}

/* ---- pure parts ------------------------------------------------------------------------- */

static void test_peek_issuer(void)
{
    char buf[64], *tok = es256_token(&key_a, ISS), *t2;
    char *h = b64url("{\"alg\":\"ES256\"}", 15);

    CHECK_EQ_INT(aor_jwt_peek_issuer(tok, strlen(tok), buf, sizeof(buf)), (int)strlen(ISS));
    CHECK_EQ_STR(buf, ISS);
    CHECK_EQ_INT(aor_jwt_peek_issuer(tok, strlen(tok), buf, strlen(ISS)), -1); /* no room for the NUL */
    CHECK_EQ_INT(aor_jwt_peek_issuer(tok, strlen(tok), buf, strlen(ISS) + 1), (int)strlen(ISS));
    CHECK_EQ_INT(aor_jwt_peek_issuer(tok, strchr(tok, '.') - tok, buf, sizeof(buf)), -1);
    CHECK_EQ_INT(aor_jwt_peek_issuer("abc", 3, buf, sizeof(buf)), -1);
    free(tok);

#define PEEK(payload)                                                                                                              \
    ({                                                                                                                             \
        char *p_ = b64url(payload, strlen(payload)), *t_ = xprintf("%s.%s.sig", h, p_);                                            \
        int r_ = aor_jwt_peek_issuer(t_, strlen(t_), buf, sizeof(buf));                                                            \
        free(p_);                                                                                                                  \
        free(t_);                                                                                                                  \
        r_;                                                                                                                        \
    })
    CHECK_EQ_INT(PEEK("{\"iss\":\"a\"}"), 1);
    CHECK_EQ_INT(PEEK("{\"iss\":\"a\",\"iss\":\"b\"}"), -1); /* duplicate members */
    CHECK_EQ_INT(PEEK("{\"iss\":1}"), -1);
    CHECK_EQ_INT(PEEK("{\"sub\":\"a\"}"), -1);
    CHECK_EQ_INT(PEEK("[\"iss\"]"), -1);
    CHECK_EQ_INT(PEEK("{\"iss\":\"a\\u0000b\"}"), -1); /* embedded NUL */
    CHECK_EQ_INT(PEEK("{\"x\":[[[[[[[[[[1]]]]]]]]]],\"iss\":\"a\"}"), -1);
    CHECK_EQ_INT(PEEK("{\"iss\":\"a\""), -1);
#undef PEEK
    /* padding and non-base64url bytes */
    t2 = xprintf("%s.eyJpc3MiOiJhIn0=.sig", h);
    CHECK_EQ_INT(aor_jwt_peek_issuer(t2, strlen(t2), buf, sizeof(buf)), -1);
    free(t2);
    t2 = xprintf("%s.eyJpc3MiOiJhIn0.sig", h);
    CHECK_EQ_INT(aor_jwt_peek_issuer(t2, strlen(t2), buf, sizeof(buf)), 1);
    free(t2);
    /* over AOR_JWT_MAX_TOKEN */
    t2 = malloc(AOR_JWT_MAX_TOKEN + 2);
    memset(t2, 'A', AOR_JWT_MAX_TOKEN + 1);
    t2[1] = '.';
    t2[AOR_JWT_MAX_TOKEN - 1] = '.';
    CHECK_EQ_INT(aor_jwt_peek_issuer(t2, AOR_JWT_MAX_TOKEN + 1, buf, sizeof(buf)), -1);
    free(t2);
    free(h);
}

/* ---- secret and file keystores --------------------------------------------------------- */

static void test_secret_and_file(void)
{
    static const char secret[] = "0123456789abcdef0123456789abcdef0123456789abcdef"; /* 48 bytes */
    struct aor_jwt_issuer_conf ic;
    struct aor_keystore *ks;
    struct idp tmp;
    char *tok, *path;
    int unknown = 0;

    memset(&ic, 0, sizeof(ic));
    ic.issuer = "https://hs.test";
    ic.secret = (char *)secret;
    ks = aor_keystore_create(&ic);
    CHECK(ks != NULL);
    CHECK(aor_keystore_ready(ks));
    CHECK_EQ_INT(stats_of(ks).keys, 1);
    CHECK_EQ_INT(aor_keystore_start(ks, &loop, up), 0); /* ignored */
    aor_keystore_request_refetch(ks);                   /* ignored */
    CHECK_EQ_INT(aor_keystore_fetch_count(ks), 0);
    tok = hs_token("HS256", EVP_sha256(), secret, "https://hs.test");
    CHECK_EQ_INT(verify(ks, tok, "https://hs.test", AOR_JWK_ALGS_HMAC, NULL), 0);
    CHECK_EQ_INT(verify(ks, tok, "https://hs.test", AOR_JWK_ALG_BIT(AOR_JWK_HS384), NULL), AOR_JWT_E_ALG);
    free(tok);
    tok = hs_token("HS384", EVP_sha384(), secret, "https://hs.test");
    CHECK_EQ_INT(verify(ks, tok, "https://hs.test", AOR_JWK_ALGS_HMAC, NULL), 0);
    free(tok);
    /* a 48-byte secret is too short for HS512 (RFC 7518 §3.2) */
    tok = hs_token("HS512", EVP_sha512(), secret, "https://hs.test");
    CHECK(verify(ks, tok, "https://hs.test", AOR_JWK_ALGS_HMAC, NULL) != 0);
    free(tok);
    tok = hs_token("HS256", EVP_sha256(), "0123456789abcdef0123456789abcdeX", "https://hs.test");
    CHECK_EQ_INT(verify(ks, tok, "https://hs.test", AOR_JWK_ALGS_HMAC, NULL), AOR_JWT_E_SIGNATURE);
    free(tok);
    aor_keystore_stop(ks); /* never started: no-op */
    aor_keystore_destroy(ks);

    /* a secret that is too short does not make a key */
    ic.secret = "short";
    ks = aor_keystore_create(&ic);
    CHECK(ks != NULL && !aor_keystore_ready(ks));
    CHECK(stats_of(ks).last_error == aor_keystore_err_jwks);
    aor_keystore_destroy(ks);

    /* jwks_file: read at create and on reload; a bad file keeps the last good keys */
    snprintf(tmp.dir, sizeof(tmp.dir), "/tmp/aor-jwksf-XXXXXX");
    CHECK(mkdtemp(tmp.dir) != NULL);
    tmp.pid = 0;
    serve_jwks(&tmp, "keys.json", &key_a, NULL, 0);
    path = xprintf("%s/keys.json", tmp.dir);
    memset(&ic, 0, sizeof(ic));
    ic.issuer = ISS;
    ic.jwks_file = path;
    ks = aor_keystore_create(&ic);
    CHECK(ks != NULL && aor_keystore_ready(ks));
    CHECK_EQ_INT(verify_es(ks, &key_a), 0);
    serve_jwks(&tmp, "keys.json", &key_b, NULL, 0);
    CHECK_EQ_INT(verify_es(ks, &key_b), AOR_JWT_E_UNKNOWN_KID);
    CHECK_EQ_INT(aor_keystore_reload_file(ks), 0);
    CHECK_EQ_INT(verify_es(ks, &key_b), 0);
    tok = es256_token(&key_a, ISS);
    CHECK_EQ_INT(verify(ks, tok, ISS, AOR_JWK_ALG_BIT(AOR_JWK_ES256), &unknown), AOR_JWT_E_UNKNOWN_KID);
    CHECK_EQ_INT(unknown, 1);
    free(tok);
    write_str(tmp.dir, "keys.json", "{\"keys\":[");
    CHECK_EQ_INT(aor_keystore_reload_file(ks), -1);
    CHECK(stats_of(ks).last_error == aor_keystore_err_jwks);
    CHECK_EQ_INT(verify_es(ks, &key_b), 0);
    /* an "oct" key in a jwks_file is not accepted: HMAC only through secret_env */
    write_str(tmp.dir, "keys.json", "{\"keys\":[{\"kty\":\"oct\",\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\"}]}");
    CHECK_EQ_INT(aor_keystore_reload_file(ks), -1);
    CHECK_EQ_INT(verify_es(ks, &key_b), 0);
    /* the size limit, and one byte over */
    serve_jwks(&tmp, "keys.json", &key_a, NULL, AOR_KEYSTORE_MAX_BODY);
    CHECK_EQ_INT(aor_keystore_reload_file(ks), 0);
    CHECK_EQ_INT(verify_es(ks, &key_a), 0);
    serve_jwks(&tmp, "keys.json", &key_b, NULL, AOR_KEYSTORE_MAX_BODY + 1);
    CHECK_EQ_INT(aor_keystore_reload_file(ks), -1);
    CHECK(stats_of(ks).last_error == aor_keystore_err_too_large);
    CHECK_EQ_INT(verify_es(ks, &key_a), 0);
    remove_file(tmp.dir, "keys.json");
    CHECK_EQ_INT(aor_keystore_reload_file(ks), -1);
    CHECK(stats_of(ks).last_error == aor_keystore_err_file);
    CHECK(aor_keystore_ready(ks));
    aor_keystore_destroy(ks);
    free(path);
    idp_cleanup(&tmp);

    CHECK(aor_keystore_create(NULL) == NULL);
    memset(&ic, 0, sizeof(ic));
    ic.issuer = ISS;
    CHECK(aor_keystore_create(&ic) == NULL); /* no key source */
}

/* ---- fetching ------------------------------------------------------------------------------ */

struct spammer {
    struct aor_keystore *ks;
    atomic_int stop;
    unsigned long calls;
};

static void *spam(void *arg)
{
    struct spammer *s = arg;
    struct timespec ts = {0, 200000};

    while (!atomic_load(&s->stop)) {
        aor_keystore_request_refetch(s->ks);
        ++s->calls;
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void test_fetch(struct idp *idp)
{
    char *disco = url(idp, "/.well-known/openid-configuration"), *jwks_url = url(idp, "/jwks.json");
    char *bad_disco = url(idp, "/bad/.well-known/openid-configuration"),
         *ftp_disco = url(idp, "/ftp/.well-known/openid-configuration");
    char *slow_url = url(idp, "/slow/jwks.json");
    struct aor_jwt_issuer_conf ic;
    struct aor_keystore *ks, *bad, *ftp, *direct, *slow;
    struct aor_keystore_stats st;
    struct spammer sp;
    pthread_t th;
    uint64_t t, n0, e0, last_change, min_gap = UINT64_MAX, changes = 0, start;
    int unknown = 0;
    char *tok;

    write_discovery(idp, "", ISS, jwks_url);
    write_discovery(idp, "bad", "https://evil.test", jwks_url);
    write_discovery(idp, "ftp", ISS, "ftp://127.0.0.1/jwks.json");
    serve_jwks(idp, "jwks.json", &key_a, NULL, 0);
    write_str(idp->dir, "cache-control", "max-age=100000, private");

    ic = issuer_conf(ISS, disco, NULL, 1);
    ks = aor_keystore_create(&ic);
    ic = issuer_conf(ISS, bad_disco, NULL, 1);
    bad = aor_keystore_create(&ic);
    ic = issuer_conf(ISS, ftp_disco, NULL, 1);
    ftp = aor_keystore_create(&ic);
    ic = issuer_conf("https://direct.test", NULL, jwks_url, 1);
    direct = aor_keystore_create(&ic);
    CHECK(ks != NULL && bad != NULL && ftp != NULL && direct != NULL);
    CHECK(!aor_keystore_ready(ks));
    CHECK(aor_keystore_current(ks) == NULL);
    CHECK_EQ_INT(verify_es(ks, &key_a), -100);

    /* initial fetch: discovery, then the JWKS; nothing happens inside start */
    CHECK_EQ_INT(aor_keystore_start(ks, &loop, up), 0);
    CHECK_EQ_INT(aor_keystore_start(ks, &loop, up), -1);
    CHECK_EQ_INT(aor_keystore_start(bad, &loop, up), 0);
    CHECK_EQ_INT(aor_keystore_start(ftp, &loop, up), 0);
    CHECK_EQ_INT(aor_keystore_start(direct, &loop, up), 0);
    CHECK_EQ_INT(aor_keystore_fetch_count(ks), 0);
    CHECK(RUN_UNTIL(aor_keystore_ready(ks) && aor_keystore_ready(direct) && ended(bad) >= 1 && ended(ftp) >= 1, 5000));
    st = stats_of(ks);
    CHECK_EQ_INT(st.fetches, 1);
    CHECK_EQ_INT(st.updates, 1);
    CHECK_EQ_INT(st.keys, 1);
    CHECK_EQ_INT(st.refresh_s, AOR_KEYSTORE_REFRESH_MAX_S); /* max-age=100000 clamped */
    CHECK_EQ_INT(AOR_KEYSTORE_REFRESH_MAX_S, 3600);         /* issue 7.8: a dropped key trusted at most an hour */
    CHECK(st.last_error == NULL);
    CHECK_EQ_INT(verify_es(ks, &key_a), 0);
    CHECK_EQ_INT(verify_es(direct, &key_a), 0);

    /* discovery naming another issuer is refused; so is a jwks_uri that is not http(s) */
    st = stats_of(bad);
    CHECK(!st.ready);
    CHECK(st.last_error == aor_keystore_err_issuer_mismatch);
    CHECK_EQ_INT(st.updates, 0);
    st = stats_of(ftp);
    CHECK(!st.ready);
    CHECK(st.last_error == aor_keystore_err_discovery);
    aor_keystore_stop(bad);
    aor_keystore_stop(ftp);

    /* rotation: the IdP now publishes B only; a token with kid B asks for a refetch */
    serve_jwks(idp, "jwks.json", &key_b, NULL, 0);
    write_str(idp->dir, "cache-control", "max-age=60");
    tok = es256_token(&key_b, ISS);
    CHECK_EQ_INT(verify(ks, tok, ISS, AOR_JWK_ALG_BIT(AOR_JWK_ES256), &unknown), AOR_JWT_E_UNKNOWN_KID);
    CHECK_EQ_INT(unknown, 1);
    free(tok);
    aor_keystore_request_refetch(ks);
    CHECK(RUN_UNTIL(stats_of(ks).updates == 2, 4000));
    st = stats_of(ks);
    CHECK_EQ_INT(st.fetches, 2);
    CHECK_EQ_INT(st.keys, 1);
    CHECK_EQ_INT(st.refresh_s, AOR_KEYSTORE_REFRESH_MIN_S); /* max-age=60 raised to the minimum */
    CHECK_EQ_INT(verify_es(ks, &key_b), 0);
    CHECK_EQ_INT(verify_es(ks, &key_a), AOR_JWT_E_UNKNOWN_KID); /* dropped by the IdP: gone */
    remove_file(idp->dir, "cache-control");

    /* a flood of refetch requests from another thread: fetches stay one cooldown (1 s) apart */
    sp.ks = ks;
    sp.calls = 0;
    atomic_init(&sp.stop, 0);
    n0 = aor_keystore_fetch_count(ks);
    start = last_change = mono_ms();
    pthread_create(&th, NULL, spam, &sp);
    while ((t = mono_ms()) - start < 3200) {
        uint64_t n = aor_keystore_fetch_count(ks);
        uv_run(&loop, UV_RUN_ONCE);
        if (aor_keystore_fetch_count(ks) != n) {
            t = mono_ms();
            if (changes != 0 && t - last_change < min_gap)
                min_gap = t - last_change;
            last_change = t;
            ++changes;
        }
    }
    atomic_store(&sp.stop, 1);
    pthread_join(th, NULL);
    t = aor_keystore_fetch_count(ks) - n0;
    fprintf(stderr, "flood: %lu refetch requests in 3.2 s -> %llu fetches (closest two %llu ms apart)\n", sp.calls,
            (unsigned long long)t, (unsigned long long)min_gap);
    CHECK(sp.calls > 1000);
    CHECK(t >= 2 && t <= 4); /* 3.2 s / 1 s cooldown, +1 for the first at the start of the window */
    CHECK(changes < 2 || min_gap >= 900);
    CHECK(RUN_UNTIL(ended(ks) == stats_of(ks).fetches, 3000));
    CHECK_EQ_INT(stats_of(ks).refresh_s, AOR_KEYSTORE_REFRESH_S); /* no Cache-Control: hourly */
    CHECK_EQ_INT(stats_of(ks).failures, 0);

    /* body exactly at the limit: accepted */
    run_for(1000); /* out of the cooldown */
    serve_jwks(idp, "jwks.json", &key_a, &key_b, AOR_KEYSTORE_MAX_BODY);
    e0 = ended(ks);
    aor_keystore_request_refetch(ks);
    CHECK(RUN_UNTIL(ended(ks) > e0, 4000));
    st = stats_of(ks);
    CHECK(st.last_error == NULL);
    CHECK_EQ_INT(st.keys, 2);
    CHECK_EQ_INT(verify_es(ks, &key_a), 0);

    /* limit + 1: aborted, the last good keys stay */
    run_for(1000);
    serve_jwks(idp, "jwks.json", &key_c, NULL, AOR_KEYSTORE_MAX_BODY + 1);
    e0 = ended(ks);
    aor_keystore_request_refetch(ks);
    CHECK(RUN_UNTIL(ended(ks) > e0, 4000));
    st = stats_of(ks);
    CHECK(st.last_error == aor_keystore_err_too_large);
    CHECK(st.ready);
    CHECK_EQ_INT(st.keys, 2);
    CHECK_EQ_INT(verify_es(ks, &key_b), 0);
    CHECK_EQ_INT(verify_es(ks, &key_c), AOR_JWT_E_UNKNOWN_KID);

    /* HTTP 404 and a document without a usable key: failures, keys kept */
    run_for(1000);
    remove_file(idp->dir, "jwks.json");
    e0 = ended(ks);
    aor_keystore_request_refetch(ks);
    CHECK(RUN_UNTIL(ended(ks) > e0, 4000));
    CHECK(stats_of(ks).last_error == aor_keystore_err_http_status);
    CHECK_EQ_INT(verify_es(ks, &key_b), 0);
    run_for(1000);
    write_str(idp->dir, "jwks.json", "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AA\"}]}");
    e0 = ended(ks);
    aor_keystore_request_refetch(ks);
    CHECK(RUN_UNTIL(ended(ks) > e0, 4000));
    CHECK(stats_of(ks).last_error == aor_keystore_err_jwks);
    CHECK_EQ_INT(stats_of(ks).keys, 2);

    /* recovery: C replaces A and B */
    run_for(1000);
    serve_jwks(idp, "jwks.json", &key_c, NULL, 0);
    e0 = ended(ks);
    aor_keystore_request_refetch(ks);
    CHECK(RUN_UNTIL(ended(ks) > e0, 4000));
    st = stats_of(ks);
    CHECK(st.last_error == NULL);
    CHECK_EQ_INT(st.keys, 1);
    CHECK_EQ_INT(verify_es(ks, &key_c), 0);
    CHECK_EQ_INT(verify_es(ks, &key_a), AOR_JWT_E_UNKNOWN_KID);

    /* single flight: with no cooldown, requests while a (slow) fetch is in flight are absorbed */
    ic = issuer_conf("https://slow.test", NULL, slow_url, 0);
    slow = aor_keystore_create(&ic);
    aor_keystore_start(slow, &loop, up);
    CHECK(RUN_UNTIL(aor_keystore_ready(slow), 5000));
    CHECK_EQ_INT(aor_keystore_fetch_count(slow), 1);
    sp.ks = slow;
    sp.calls = 0;
    atomic_store(&sp.stop, 0);
    pthread_create(&th, NULL, spam, &sp);
    run_for(1000); /* the second fetch starts at once and takes 1.5 s */
    atomic_store(&sp.stop, 1);
    pthread_join(th, NULL);
    CHECK_EQ_INT(aor_keystore_fetch_count(slow), 2);
    CHECK(RUN_UNTIL(ended(slow) == 2, 3000));
    run_for(100);
    CHECK_EQ_INT(aor_keystore_fetch_count(slow), 2);
    aor_keystore_stop(slow);

    /* the IdP goes down: the fetch fails, the last good keys keep serving */
    idp_stop(idp);
    run_for(1000);
    e0 = ended(ks);
    aor_keystore_request_refetch(ks);
    CHECK(RUN_UNTIL(ended(ks) > e0, 4000));
    st = stats_of(ks);
    CHECK(st.last_error == aor_keystore_err_transport);
    CHECK(st.ready);
    CHECK_EQ_INT(verify_es(ks, &key_c), 0);
    CHECK_EQ_INT(verify_es(direct, &key_a), 0);

    /* stop in the middle of a schedule; close callbacks on the next turn; then destroy */
    aor_keystore_request_refetch(ks);
    aor_keystore_stop(ks);
    aor_keystore_stop(ks);
    aor_keystore_stop(direct);
    aor_keystore_request_refetch(ks); /* after stop: ignored, no signal to a closed handle */
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(verify_es(ks, &key_c), 0); /* keys stay readable after stop */
    aor_keystore_destroy(ks);
    aor_keystore_destroy(bad);
    aor_keystore_destroy(ftp);
    aor_keystore_destroy(direct);
    aor_keystore_destroy(slow);
    free(disco);
    free(jwks_url);
    free(bad_disco);
    free(ftp_disco);
    free(slow_url);
}

/* ---- the registry across reloads ------------------------------------------------------------ */

static struct aor_config *config(const char *issuers)
{
    char *text = xprintf("listen:\n  - port: 8080\n"
                         "backends:\n  - { name: b1, url: \"http://127.0.0.1:9000\" }\n"
                         "auth:\n  mode: jwt\n  jwt:\n%s",
                         issuers);
    struct aor_config *conf = aor_config_parse("t.yaml", text, strlen(text), stderr);
    free(text);
    CHECK(conf != NULL);
    return conf;
}

static void test_registry(struct idp *idp)
{
    char *file = xprintf("%s/file.json", idp->dir);
    char *a = xprintf("    - { issuer: \"https://a.test\", jwks_uri: \"http://127.0.0.1:%d/jwks.json\", audiences: [\"%s\"],"
                      " jwks_refetch_cooldown_s: 1 }\n",
                      idp->port, AUD);
    char *b = xprintf("    - { issuer: \"https://b.test\", jwks_uri: \"http://127.0.0.1:%d/jwks2.json\", audiences: [\"%s\"] }\n",
                      idp->port, AUD);
    char *s1 = xprintf("    - { issuer: \"https://s.test\", secret_env: AOR_TEST_SECRET_1, audiences: [\"%s\"] }\n", AUD);
    char *s2 = xprintf("    - { issuer: \"https://s.test\", secret_env: AOR_TEST_SECRET_2, audiences: [\"%s\"] }\n", AUD);
    char *f = xprintf("    - { issuer: \"https://f.test\", jwks_file: \"%s\", audiences: [\"%s\"] }\n", file, AUD);
    char *text;
    struct aor_config *c1, *c2, *c3, *c4;
    struct aor_keystore *o1[3], *o2[3], *o3[1], *o4[1];
    uint64_t n;
    char *tok;

    setenv("AOR_TEST_SECRET_1", "secret-one-0123456789abcdef0123456789", 1);
    setenv("AOR_TEST_SECRET_2", "secret-two-0123456789abcdef0123456789", 1);
    serve_jwks(idp, "jwks.json", &key_a, NULL, 0);
    serve_jwks(idp, "jwks2.json", &key_b, NULL, 0);
    serve_jwks(idp, "file.json", &key_c, NULL, 0);

    text = xprintf("%s%s%s", a, s1, f);
    c1 = config(text);
    free(text);
    text = xprintf("%s%s%s", s2, a, b); /* f dropped, s's secret changed, b new, order changed */
    c2 = config(text);
    free(text);
    c3 = config(b); /* a dropped */
    c4 = config(a); /* a back */
    if (c1 == NULL || c2 == NULL || c3 == NULL || c4 == NULL)
        goto exit;

    CHECK_EQ_INT(aor_jwt_issuer_index(c2, "https://a.test", 14), 1);
    CHECK_EQ_INT(aor_jwt_issuer_index(c2, "https://b.test", 14), 2);
    CHECK_EQ_INT(aor_jwt_issuer_index(c2, "https://a.tes", 13), -1);
    CHECK_EQ_INT(aor_jwt_issuer_index(c2, "https://f.test", 14), -1);

    /* start: secret and file keys at once, URL keys once the fetch loop runs */
    CHECK_EQ_INT(aor_keystores_attach(c1, o1), 0);
    CHECK(aor_keystore_ready(o1[1]) && aor_keystore_ready(o1[2]));
    CHECK(!aor_keystore_ready(o1[0]));
    CHECK_EQ_STR(aor_keystore_issuer(o1[0]), "https://a.test");
    CHECK_EQ_INT(aor_keystores_start(&loop, up), 0);
    CHECK_EQ_INT(aor_keystores_start(&loop, up), -1);
    CHECK(RUN_UNTIL(aor_keystore_ready(o1[0]), 5000));
    CHECK_EQ_INT(verify_es(o1[2], &key_c), 0);
    tok = hs_token("HS256", EVP_sha256(), "secret-one-0123456789abcdef0123456789", "https://s.test");
    CHECK_EQ_INT(verify(o1[1], tok, "https://s.test", AOR_JWK_ALGS_HMAC, NULL), 0);
    free(tok);

    /* reload: a survives (same issuer and URL), s gets a new keystore (new secret), b starts on the loop */
    CHECK_EQ_INT(aor_keystores_attach(c2, o2), 0);
    CHECK(o2[1] == o1[0]);
    CHECK(o2[0] != o1[1]);
    CHECK(aor_keystore_ready(o2[0]));
    tok = hs_token("HS256", EVP_sha256(), "secret-two-0123456789abcdef0123456789", "https://s.test");
    CHECK_EQ_INT(verify(o2[0], tok, "https://s.test", AOR_JWK_ALGS_HMAC, NULL), 0);
    CHECK_EQ_INT(verify(o1[1], tok, "https://s.test", AOR_JWK_ALGS_HMAC, NULL), AOR_JWT_E_SIGNATURE);
    free(tok);
    CHECK(RUN_UNTIL(aor_keystore_ready(o2[2]), 5000));
    CHECK_EQ_INT(verify_es(o2[2], &key_b), 0);
    /* a reload refetches every URL issuer it keeps at once, cooldown or not (issue 7.8: SIGHUP is
     * the operator's lever after a compromise) */
    CHECK(RUN_UNTIL(aor_keystore_fetch_count(o2[1]) == 2 && ended(o2[1]) == 2, 3000));

    /* a dropped: it stops refreshing (a refetch is ignored) but its keys stay readable */
    CHECK_EQ_INT(aor_keystores_attach(c3, o3), 0);
    CHECK(o3[0] == o2[2]);
    run_for(1100);
    aor_keystore_request_refetch(o1[0]);
    run_for(1200);
    CHECK_EQ_INT(aor_keystore_fetch_count(o1[0]), 2);
    CHECK_EQ_INT(verify_es(o1[0], &key_a), 0);

    /* a back: the same keystore, refetched at once by the reload: the key the IdP dropped is gone */
    serve_jwks(idp, "jwks.json", &key_b, NULL, 0);
    n = aor_keystore_fetch_count(o1[0]);
    CHECK_EQ_INT(aor_keystores_attach(c4, o4), 0);
    CHECK(o4[0] == o1[0]);
    CHECK(RUN_UNTIL(aor_keystore_fetch_count(o1[0]) == n + 1 && ended(o1[0]) == n + 1, 3000));
    CHECK_EQ_INT(verify_es(o1[0], &key_b), 0);
    CHECK(verify_es(o1[0], &key_a) != 0);

    /* exit: stop on the fetch loop, one turn for the close callbacks, then free */
    aor_keystores_stop();
    aor_keystores_stop();
    uv_run(&loop, UV_RUN_NOWAIT);
    aor_keystores_free();
exit:
    aor_config_release(c1);
    aor_config_release(c2);
    aor_config_release(c3);
    aor_config_release(c4);
    free(file);
    free(a);
    free(b);
    free(s1);
    free(s2);
    free(f);
}

static void on_tick(uv_timer_t *t)
{
}

static void on_closed(uv_handle_t *h)
{
}

int main(void)
{
    struct idp idp1, idp2;
    int rc;

    if (getenv("AOR_LOG_LEVEL") == NULL)
        aor_log_level = AOR_LOG_ERROR;
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    uv_loop_init(&loop);
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, on_tick, 10, 10);
    up = aor_upstream_create(&loop);
    key_a = new_key("key-a");
    key_b = new_key("key-b");
    key_c = new_key("key-c");

    test_peek_issuer();
    test_secret_and_file();
    memset(&idp1, 0, sizeof(idp1));
    memset(&idp2, 0, sizeof(idp2));
    if (idp_start(&idp1) != 0 || idp_start(&idp2) != 0) {
        fprintf(stderr, "test_jwks: cannot start python3 http.server: skipped\n");
        idp_cleanup(&idp1);
        idp_cleanup(&idp2);
        return 77;
    }
    test_fetch(&idp1);
    test_registry(&idp2);
    idp_cleanup(&idp1);
    idp_cleanup(&idp2);

    /* a clean loop at the end: every handle closed */
    aor_upstream_destroy(up);
    uv_timer_stop(&tick);
    uv_close((uv_handle_t *)&tick, on_closed);
    uv_run(&loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&loop);
    CHECK_EQ_INT(rc, 0);
    EVP_PKEY_free(key_a.pk);
    EVP_PKEY_free(key_b.pk);
    EVP_PKEY_free(key_c.pk);
    curl_global_cleanup();
    return aor_test_done("test_jwks");
}
