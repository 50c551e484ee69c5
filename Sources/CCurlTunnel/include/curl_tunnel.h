#ifndef FIELDGATE_CURL_TUNNEL_H
#define FIELDGATE_CURL_TUNNEL_H
/* A TLS byte stream to host:port, through an HTTP proxy when one is set, opened by libcurl (CONNECT_ONLY): TCP,
 * the proxy's CONNECT with its authentication (Basic, Digest, NTLM…), then TLS with the hub's name as SNI and
 * verified against the CA bundle. Nothing but raw bytes afterwards; the caller speaks WebSocket over it. */
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

typedef struct fg_tunnel fg_tunnel;

typedef struct fg_tunnel_options {
    const char *host;          /* the hub's name: SNI, certificate check, proxy CONNECT target */
    int port;
    const char *address;       /* connect here instead of resolving host (NULL: resolve host) */
    const char *ca_file;       /* PEM bundle; NULL: the system's */
    bool verify_peer;          /* false only in tests */
    const char *proxy;         /* "http://host:port"; NULL: https_proxy/no_proxy from the environment; "" : none */
    const char *proxy_user;    /* NULL: none */
    const char *proxy_password;
    long connect_timeout_ms;   /* TCP + proxy + TLS */
    const volatile int *cancel;/* non-zero aborts the opening */
    const char *client_cert;   /* PEM client certificate with its chain (X.509 authentication); NULL: none */
    const char *client_key;    /* its PEM private key */
} fg_tunnel_options;

/* 0 on success. On failure *out stays NULL, err holds a sentence, and *proxy_status the proxy's HTTP status when
 * it refused the CONNECT (0 otherwise). */
int fg_tunnel_open(const fg_tunnel_options *options, fg_tunnel **out, char *err, size_t err_len, long *proxy_status);
/* The socket, for poll(). */
int fg_tunnel_socket(fg_tunnel *t);
/* Bytes sent (>= 0; 0 = would block), or -1 with err. */
long fg_tunnel_send(fg_tunnel *t, const void *bytes, size_t len, char *err, size_t err_len);
/* Bytes received (> 0), 0 = would block, -2 = the peer closed, -1 = error (err). */
long fg_tunnel_recv(fg_tunnel *t, void *buffer, size_t len, char *err, size_t err_len);
void fg_tunnel_close(fg_tunnel *t);
/* A non-blocking eventfd, to wake the tunnel's poll() from other threads. */
int fg_wake_descriptor(void);
/* Loads libcurl (dlopen) and runs its global set-up, once; safe from any thread. A failure is reported by the
 * first request or tunnel. */
void fg_tunnel_global_init(void);

/* One HTTPS request (IoT Hub's device REST calls, Blob PUTs), blocking, with the tunnel's TLS and proxy rules. */
typedef struct fg_http_request {
    const char *method;        /* GET, POST, PUT */
    const char *url;           /* https only */
    const char *const *headers;/* "Name: value" each */
    size_t header_count;
    const void *body;          /* NULL: none */
    size_t body_len;
    const char *connect_host;  /* with connect_address: connect there when the URL names this host */
    const char *connect_address;
    const char *ca_file;       /* NULL: the system's bundle */
    bool verify_peer;
    const char *client_cert;   /* PEM client certificate (X.509 authentication); NULL: none */
    const char *client_key;    /* its PEM private key */
    const char *proxy;         /* as in fg_tunnel_options */
    const char *proxy_user;
    const char *proxy_password;
    long timeout_ms;           /* the whole request */
    size_t max_response_bytes; /* longer responses fail */
    const volatile int *cancel;
} fg_http_request;

typedef struct fg_http_response {
    long status;               /* the HTTP status; 0 when none came */
    unsigned char *body;       /* malloc'd; fg_http_response_free */
    size_t body_len;
    long retry_after_seconds;  /* the Retry-After header in seconds (a date is turned into the wait); 0 when none */
} fg_http_response;

/* 0 when a response came (any status); -1 otherwise, with err. */
int fg_http_perform(const fg_http_request *request, fg_http_response *response, char *err, size_t err_len);
void fg_http_response_free(fg_http_response *response);

/* A GET of an https URL (redirects followed, https only) into the file open at fd, resuming at the file's size
 * `resume_from` with a Range request. A 200 to a resumed request restarts the file from 0; the body goes to the
 * file only with a 2xx status; more than max_bytes in the file in all fails. 0 when a response came (*status set,
 * *total = the file's size after it), -1 otherwise with err. Uses the request's TLS, proxy, timeout and cancel
 * fields (method, headers and body are ignored). */
int fg_http_download(const fg_http_request *request, int fd, long long resume_from, long long max_bytes, long *status,
                     long long *total, char *err, size_t err_len);
#endif
