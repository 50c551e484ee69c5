#include "curl_tunnel.h"
#include "curl_common.h"
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>

struct fg_sink {
    fg_http_response *response;
    size_t limit;
    int overflow;
};

static size_t fg_collect(char *data, size_t size, size_t count, void *userdata) {
    struct fg_sink *sink = userdata;
    size_t n = size * count;
    fg_http_response *r = sink->response;
    if (r->body_len + n > sink->limit) { sink->overflow = 1; return 0; }
    unsigned char *grown = realloc(r->body, r->body_len + n + 1);
    if (!grown) return 0;
    memcpy(grown + r->body_len, data, n);
    r->body = grown;
    r->body_len += n;
    r->body[r->body_len] = 0;
    return n;
}

/* What a request and a download set alike: the connect-to override, errors, timeouts, cancellation, TLS and proxy.
 * Returns the connect-to list, freed by the caller after the transfer (NULL when none). */
static struct curl_slist *fg_request_options(CURL *c, const fg_http_request *q, char *connect_to, size_t len, char *errbuf) {
    struct curl_slist *targets = NULL;
    if (q->connect_host && q->connect_address && q->connect_address[0]) {
        /* An IPv6 address goes in brackets there. */
        int v6 = strchr(q->connect_address, ':') != NULL && q->connect_address[0] != '[';
        snprintf(connect_to, len, v6 ? "%s::[%s]:" : "%s::%s:", q->connect_host, q->connect_address);
        targets = curl_slist_append(NULL, connect_to);
        curl_easy_setopt(c, CURLOPT_CONNECT_TO, targets);
    }
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, q->timeout_ms);
    /* A transfer that stalls (under 256 B/s for 60 s) ends before the overall timeout. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 256L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, q->timeout_ms < 30000 ? q->timeout_ms : 30000L);
    fg_curl_cancellable(c, q->cancel);
    fg_curl_tls_and_proxy(c, q->ca_file, q->verify_peer, q->proxy, q->proxy_user, q->proxy_password);
    if (q->client_cert && q->client_key) {
        curl_easy_setopt(c, CURLOPT_SSLCERT, q->client_cert);
        curl_easy_setopt(c, CURLOPT_SSLKEY, q->client_key);
    }
    return targets;
}

int fg_http_perform(const fg_http_request *q, fg_http_response *r, char *err, size_t err_len) {
    memset(r, 0, sizeof *r);
    if (err_len) err[0] = 0;
    CURL *c = fg_curl_start(err, err_len);
    if (!c) return -1;
    char errbuf[CURL_ERROR_SIZE] = "", connect_to[1200];
    struct curl_slist *headers = NULL, *targets = NULL;
    for (size_t i = 0; i < q->header_count; i++) headers = curl_slist_append(headers, q->headers[i]);
    /* libcurl would otherwise send "Expect: 100-continue" before a large body and wait for the answer. */
    headers = curl_slist_append(headers, "Expect:");
    targets = fg_request_options(c, q, connect_to, sizeof connect_to, errbuf);
    struct fg_sink sink = { r, q->max_response_bytes, 0 };
    curl_easy_setopt(c, CURLOPT_URL, q->url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, q->method);
    if (strcmp(q->method, "GET") != 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, q->body ? q->body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(q->body ? q->body_len : 0));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fg_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(headers);
    curl_slist_free_all(targets);
    if (rc != CURLE_OK) {
        long verify = 0, proxy_status = 0;
        curl_easy_getinfo(c, CURLINFO_HTTP_CONNECTCODE, &proxy_status);
        if (sink.overflow)
            snprintf(err, err_len, "the response is longer than %zu bytes", q->max_response_bytes);
        else if (curl_easy_getinfo(c, CURLINFO_SSL_VERIFYRESULT, &verify) == CURLE_OK && verify != 0)
            snprintf(err, err_len, "certificate verification failed: %s (%s)", X509_verify_cert_error_string(verify),
                     errbuf[0] ? errbuf : curl_easy_strerror(rc));
        else if (proxy_status >= 300)
            snprintf(err, err_len, "the proxy refused the CONNECT (HTTP %ld): %s", proxy_status, errbuf[0] ? errbuf : curl_easy_strerror(rc));
        else
            snprintf(err, err_len, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
        curl_easy_cleanup(c);
        fg_http_response_free(r);
        return -1;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_off_t retry_after = 0;
    if (curl_easy_getinfo(c, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK) r->retry_after_seconds = (long)retry_after;
    curl_easy_cleanup(c);
    return 0;
}

void fg_http_response_free(fg_http_response *r) {
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}

struct fg_file_sink {
    CURL *curl;
    int fd;
    long long offset;      /* bytes in the file */
    long long max_bytes;
    int decided;           /* the status was looked at */
    int keep;              /* a 2xx: the body goes to the file */
    int overflow;
    int write_errno;
};

static size_t fg_to_file(char *data, size_t size, size_t count, void *userdata) {
    struct fg_file_sink *sink = userdata;
    size_t n = size * count;
    if (!sink->decided) {
        long code = 0;
        curl_easy_getinfo(sink->curl, CURLINFO_RESPONSE_CODE, &code);
        sink->decided = 1;
        sink->keep = code >= 200 && code < 300;
        if (code == 200 && sink->offset > 0) {
            /* The server sent the whole file, not the rest: start over. */
            if (ftruncate(sink->fd, 0) != 0 || lseek(sink->fd, 0, SEEK_SET) < 0) { sink->write_errno = errno; return 0; }
            sink->offset = 0;
        }
    }
    if (!sink->keep) return n;
    if (sink->offset + (long long)n > sink->max_bytes) { sink->overflow = 1; return 0; }
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(sink->fd, data + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) { sink->write_errno = errno; return 0; }
        done += (size_t)w;
    }
    sink->offset += (long long)n;
    return n;
}

int fg_http_download(const fg_http_request *q, int fd, long long resume_from, long long max_bytes, long *status,
                     long long *total, char *err, size_t err_len) {
    if (err_len) err[0] = 0;
    *status = 0;
    *total = resume_from;
    CURL *c = fg_curl_start(err, err_len);
    if (!c) return -1;
    char errbuf[CURL_ERROR_SIZE] = "", connect_to[1200];
    struct curl_slist *targets = fg_request_options(c, q, connect_to, sizeof connect_to, errbuf);
    struct fg_file_sink sink = { c, fd, resume_from, max_bytes, 0, 0, 0, 0 };
    curl_easy_setopt(c, CURLOPT_URL, q->url);
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    /* https only, redirects included (a package URI often redirects to a CDN). */
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
    if (resume_from > 0) curl_easy_setopt(c, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)resume_from);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fg_to_file);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_RANGE_ERROR && resume_from > 0) {
        /* The server does not serve ranges (libcurl stops before any body): the whole file, from 0. */
        if (ftruncate(fd, 0) == 0 && lseek(fd, 0, SEEK_SET) == 0) {
            sink.offset = 0;
            sink.decided = 0;
            curl_easy_setopt(c, CURLOPT_RESUME_FROM_LARGE, (curl_off_t)0);
            errbuf[0] = 0;
            rc = curl_easy_perform(c);
        }
    }
    curl_slist_free_all(targets);
    *total = sink.offset;
    if (rc != CURLE_OK) {
        long verify = 0;
        if (sink.overflow)
            snprintf(err, err_len, "the package is larger than %lld bytes", max_bytes);
        else if (sink.write_errno)
            snprintf(err, err_len, "cannot write the download: %s", strerror(sink.write_errno));
        else if (curl_easy_getinfo(c, CURLINFO_SSL_VERIFYRESULT, &verify) == CURLE_OK && verify != 0)
            snprintf(err, err_len, "certificate verification failed: %s (%s)", X509_verify_cert_error_string(verify),
                     errbuf[0] ? errbuf : curl_easy_strerror(rc));
        else
            snprintf(err, err_len, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
        curl_easy_cleanup(c);
        return -1;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(c);
    return 0;
}
