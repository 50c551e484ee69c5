#ifndef FIELDGATE_CURL_COMMON_H
#define FIELDGATE_CURL_COMMON_H
/* What the tunnel and the HTTPS requests set alike: cancellation, TLS (1.2+, the CA bundle, the name check) and the
 * proxy (explicit, none, or the environment's) with its authentication. Internal to this target. */
#include <curl/curl.h>
#include <stdbool.h>

void fg_curl_cancellable(CURL *c, const volatile int *cancel);
void fg_curl_tls_and_proxy(CURL *c, const char *ca_file, bool verify_peer, const char *proxy, const char *proxy_user,
                           const char *proxy_password);
#endif
