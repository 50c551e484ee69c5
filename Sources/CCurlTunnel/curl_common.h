#ifndef FIELDGATE_CURL_COMMON_H
#define FIELDGATE_CURL_COMMON_H
/* What the tunnel and the HTTPS requests set alike: cancellation, TLS (1.2+, the CA bundle, the name check) and the
 * proxy (explicit, none, or the environment's) with its authentication. Internal to this target.
 *
 * libcurl is loaded when first used (dlopen), not linked: a gateway on plain AMQPS without DPS, uploads or updates
 * never calls it, and linking it mapped it and its dependencies (GnuTLS, Kerberos, LDAP, p11-kit…: 24 libraries)
 * into every process, with their relocated data and start-up state resident for good. The calls below go through a table filled at load. */
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>

struct fg_curl_api {
    CURLcode (*global_init)(long flags);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *c, CURLoption option, ...);
    CURLcode (*easy_perform)(CURL *c);
    CURLcode (*easy_getinfo)(CURL *c, CURLINFO info, ...);
    void (*easy_cleanup)(CURL *c);
    const char *(*easy_strerror)(CURLcode code);
    CURLcode (*easy_recv)(CURL *c, void *buffer, size_t length, size_t *received);
    CURLcode (*easy_send)(CURL *c, const void *buffer, size_t length, size_t *sent);
    struct curl_slist *(*slist_append)(struct curl_slist *list, const char *text);
    void (*slist_free_all)(struct curl_slist *list);
};
extern struct fg_curl_api fg_curl_api;

/* Loads libcurl and runs its global set-up, once; NULL on success, else why it could not be loaded. */
const char *fg_curl_load(void);
/* A new easy handle (libcurl loaded first); NULL with the reason in `err`. */
CURL *fg_curl_start(char *err, size_t err_len);

#define curl_global_init fg_curl_api.global_init
#undef curl_easy_setopt  /* curl.h's own macros, without its type checks */
#undef curl_easy_getinfo
#define curl_easy_setopt fg_curl_api.easy_setopt
#define curl_easy_perform fg_curl_api.easy_perform
#define curl_easy_getinfo fg_curl_api.easy_getinfo
#define curl_easy_cleanup fg_curl_api.easy_cleanup
#define curl_easy_strerror fg_curl_api.easy_strerror
#define curl_easy_recv fg_curl_api.easy_recv
#define curl_easy_send fg_curl_api.easy_send
#define curl_slist_append fg_curl_api.slist_append
#define curl_slist_free_all fg_curl_api.slist_free_all

void fg_curl_cancellable(CURL *c, const volatile int *cancel);
void fg_curl_tls_and_proxy(CURL *c, const char *ca_file, bool verify_peer, const char *proxy, const char *proxy_user,
                           const char *proxy_password);
#endif
