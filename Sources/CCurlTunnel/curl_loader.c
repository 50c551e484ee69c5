#include "curl_common.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

struct fg_curl_api fg_curl_api;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[512];

/* The OpenSSL flavour (Debian's libcurl4 / libcurl4t64), the one the headers and fg_curl_tls_and_proxy are for. */
#define FG_LIBCURL "libcurl.so.4"

static int resolve(void *lib, void **slot, const char *name) {
    *slot = dlsym(lib, name);
    if (*slot) return 0;
    snprintf(load_error, sizeof load_error, "%s has no %s (libcurl 7.85 or later is needed)", FG_LIBCURL, name);
    return -1;
}

static void load(void) {
    void *lib = dlopen(FG_LIBCURL, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *why = dlerror();
        snprintf(load_error, sizeof load_error, "libcurl could not be loaded (%s): install libcurl4 (libcurl4t64 on Debian 13)", why ? why : FG_LIBCURL);
        return;
    }
    struct fg_curl_api api;
    if (resolve(lib, (void **)&api.global_init, "curl_global_init") || resolve(lib, (void **)&api.easy_init, "curl_easy_init")
        || resolve(lib, (void **)&api.easy_setopt, "curl_easy_setopt") || resolve(lib, (void **)&api.easy_perform, "curl_easy_perform")
        || resolve(lib, (void **)&api.easy_getinfo, "curl_easy_getinfo") || resolve(lib, (void **)&api.easy_cleanup, "curl_easy_cleanup")
        || resolve(lib, (void **)&api.easy_strerror, "curl_easy_strerror") || resolve(lib, (void **)&api.easy_recv, "curl_easy_recv")
        || resolve(lib, (void **)&api.easy_send, "curl_easy_send") || resolve(lib, (void **)&api.slist_append, "curl_slist_append")
        || resolve(lib, (void **)&api.slist_free_all, "curl_slist_free_all")) {
        return;  /* the library stays loaded: unloading what may have run constructors buys nothing */
    }
    CURLcode code = api.global_init(CURL_GLOBAL_DEFAULT);
    if (code != CURLE_OK) {
        snprintf(load_error, sizeof load_error, "libcurl's global set-up failed (%s)", api.easy_strerror(code));
        return;
    }
    fg_curl_api = api;
}

const char *fg_curl_load(void) {
    pthread_once(&load_once, load);
    return fg_curl_api.easy_init ? NULL : load_error;
}

CURL *fg_curl_start(char *err, size_t err_len) {
    const char *why = fg_curl_load();
    if (why) {
        snprintf(err, err_len, "%s", why);
        return NULL;
    }
    CURL *c = fg_curl_api.easy_init();
    if (!c) snprintf(err, err_len, "libcurl could not start");
    return c;
}
