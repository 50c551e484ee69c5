#include "tls_probe.h"
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static long long unix_time(const ASN1_TIME *t) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
    return (long long)timegm(&tm);
}

static void openssl_error(char *out, size_t size) {
    unsigned long e = ERR_peek_last_error();
    if (e == 0) { strncpy(out, "OpenSSL gave no reason", size - 1); return; }
    ERR_error_string_n(e, out, size);
}

/* Why SSL_connect failed, in words: OpenSSL's error queue, or the socket's (a timeout, a reset, a close). */
static void handshake_error(SSL *ssl, int rc, int saved_errno, char *out, size_t size) {
    int kind = SSL_get_error(ssl, rc);
    if (kind == SSL_ERROR_SYSCALL && ERR_peek_last_error() == 0) {
        if (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK) snprintf(out, size, "no answer within the timeout");
        else if (saved_errno != 0) snprintf(out, size, "%s", strerror(saved_errno));
        else snprintf(out, size, "the peer closed the connection during the handshake");
        return;
    }
    if (kind == SSL_ERROR_ZERO_RETURN) { snprintf(out, size, "the peer closed the connection during the handshake"); return; }
    openssl_error(out, size);
}

int fg_tls_probe(int fd, const char *host, const char *ca_file, fg_tls_probe_result *out) {
    memset(out, 0, sizeof *out);
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) { openssl_error(out->error_text, sizeof out->error_text); return 0; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    int trusted = ca_file != NULL ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) : SSL_CTX_set_default_verify_paths(ctx);
    if (trusted != 1) {
        openssl_error(out->error_text, sizeof out->error_text);
        SSL_CTX_free(ctx);
        return 0;
    }
    /* Complete the handshake whatever the certificate, then report the verification result in words. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL) {
        openssl_error(out->error_text, sizeof out->error_text);
        SSL_CTX_free(ctx);
        return 0;
    }
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, host);
    SSL_set1_host(ssl, host);
    errno = 0;
    int rc = SSL_connect(ssl);
    int saved_errno = errno;
    if (rc == 1) {
        out->handshake_ok = 1;
        out->verify_result = SSL_get_verify_result(ssl);
        strncpy(out->verify_text, X509_verify_cert_error_string(out->verify_result), sizeof out->verify_text - 1);
        strncpy(out->protocol, SSL_get_version(ssl), sizeof out->protocol - 1);
        X509 *cert = SSL_get_peer_certificate(ssl);
        if (cert != NULL) {
            X509_NAME_oneline(X509_get_subject_name(cert), out->subject, sizeof out->subject);
            X509_NAME_oneline(X509_get_issuer_name(cert), out->issuer, sizeof out->issuer);
            out->not_before = unix_time(X509_get0_notBefore(cert));
            out->not_after = unix_time(X509_get0_notAfter(cert));
            X509_free(cert);
        }
        SSL_shutdown(ssl);
    } else {
        handshake_error(ssl, rc, saved_errno, out->error_text, sizeof out->error_text);
    }
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return out->handshake_ok;
}
