#include "curl_tunnel.h"
#include "curl_common.h"
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

int fg_wake_descriptor(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

struct fg_tunnel {
    CURL *curl;
    int socket;
};



void fg_tunnel_global_init(void) { (void)fg_curl_load(); }

static int fg_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    (void)dltotal; (void)dlnow; (void)ultotal; (void)ulnow;
    const volatile int *cancel = clientp;
    return cancel && *cancel ? 1 : 0;
}

void fg_curl_cancellable(CURL *c, const volatile int *cancel) {
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, fg_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, (void *)cancel);
}

void fg_curl_tls_and_proxy(CURL *c, const char *ca_file, bool verify_peer, const char *proxy, const char *proxy_user,
                           const char *proxy_password) {
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, verify_peer ? 1L : 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, verify_peer ? 2L : 0L);
    if (ca_file) curl_easy_setopt(c, CURLOPT_CAINFO, ca_file);
    if (proxy) {
        curl_easy_setopt(c, CURLOPT_PROXY, proxy);  /* "" switches the environment's proxy off */
        if (proxy[0]) curl_easy_setopt(c, CURLOPT_NOPROXY, "");  /* an explicit proxy applies to the hub always */
    }
    curl_easy_setopt(c, CURLOPT_HTTPPROXYTUNNEL, 1L);
    if (proxy_user) {
        curl_easy_setopt(c, CURLOPT_PROXYUSERNAME, proxy_user);
        curl_easy_setopt(c, CURLOPT_PROXYPASSWORD, proxy_password ? proxy_password : "");
        curl_easy_setopt(c, CURLOPT_PROXYAUTH, (long)CURLAUTH_ANY);
    }
}

int fg_tunnel_open(const fg_tunnel_options *o, fg_tunnel **out, char *err, size_t err_len, long *proxy_status) {
    *out = NULL;
    *proxy_status = 0;
    if (err_len) err[0] = 0;
    CURL *c = fg_curl_start(err, err_len);
    if (!c) return -1;
    char url[1024], connect_to[1200], errbuf[CURL_ERROR_SIZE] = "";
    snprintf(url, sizeof url, "https://%s:%d/", o->host, o->port);
    struct curl_slist *targets = NULL;
    if (o->address && o->address[0]) {
        snprintf(connect_to, sizeof connect_to, "%s:%d:%s:%d", o->host, o->port, o->address, o->port);
        targets = curl_slist_append(NULL, connect_to);
        curl_easy_setopt(c, CURLOPT_CONNECT_TO, targets);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CONNECT_ONLY, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    fg_curl_cancellable(c, o->cancel);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    fg_curl_tls_and_proxy(c, o->ca_file, o->verify_peer, o->proxy, o->proxy_user, o->proxy_password);
    if (o->client_cert && o->client_key) {
        curl_easy_setopt(c, CURLOPT_SSLCERT, o->client_cert);
        curl_easy_setopt(c, CURLOPT_SSLKEY, o->client_key);
    }
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(targets);  /* used only while connecting */
    if (rc != CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_HTTP_CONNECTCODE, proxy_status);
        long verify = 0;
        /* OpenSSL's own verdict on the chain says more than the handshake's last error. */
        if (curl_easy_getinfo(c, CURLINFO_SSL_VERIFYRESULT, &verify) == CURLE_OK && verify != 0)
            snprintf(err, err_len, "certificate verification failed: %s (%s)", X509_verify_cert_error_string(verify),
                     errbuf[0] ? errbuf : curl_easy_strerror(rc));
        else
            snprintf(err, err_len, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
        curl_easy_cleanup(c);
        return -1;
    }
    curl_socket_t s = CURL_SOCKET_BAD;
    if (curl_easy_getinfo(c, CURLINFO_ACTIVESOCKET, &s) != CURLE_OK || s == CURL_SOCKET_BAD) {
        snprintf(err, err_len, "libcurl opened no socket");
        curl_easy_cleanup(c);
        return -1;
    }
    fg_tunnel *t = calloc(1, sizeof *t);
    if (!t) { curl_easy_cleanup(c); snprintf(err, err_len, "out of memory"); return -1; }
    /* The buffer lives on this stack frame: later errors come from the return codes. */
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
    t->curl = c;
    t->socket = (int)s;
    *out = t;
    return 0;
}

int fg_tunnel_socket(fg_tunnel *t) { return t->socket; }

long fg_tunnel_send(fg_tunnel *t, const void *bytes, size_t len, char *err, size_t err_len) {
    size_t sent = 0;
    CURLcode rc = curl_easy_send(t->curl, bytes, len, &sent);
    if (rc == CURLE_AGAIN) return 0;
    if (rc != CURLE_OK) { snprintf(err, err_len, "%s", curl_easy_strerror(rc)); return -1; }
    return (long)sent;
}

long fg_tunnel_recv(fg_tunnel *t, void *buffer, size_t len, char *err, size_t err_len) {
    size_t got = 0;
    CURLcode rc = curl_easy_recv(t->curl, buffer, len, &got);
    if (rc == CURLE_AGAIN) return 0;
    if (rc != CURLE_OK) { snprintf(err, err_len, "%s", curl_easy_strerror(rc)); return -1; }
    return got == 0 ? -2 : (long)got;
}

void fg_tunnel_close(fg_tunnel *t) {
    if (!t) return;
    curl_easy_cleanup(t->curl);
    free(t);
}
