/*
 * proton-floor: what fieldgated's AMQP work costs in memory with nothing else in the process.
 *
 * `fieldgate-bench daemon-memory --floor` runs it against the same hub and leaves as fieldgated: one TLS
 * connection without SASL (as fieldgated's uplink), one hub-scope put-token on $cbs, then per leaf the links
 * fieldgated attaches — telemetry, C2D, the methods pair and the twin pair (or telemetry only) — with names of the
 * same form and the same addresses, attach properties, settle modes and credit, in sessions of 100 leaves, at most
 * 32 leaves attaching at once. Once every link is attached it writes "attached" to the ready file, gives back its
 * start-up pages by fieldgated's rule (MADV_DONTNEED on read-only file mappings without private pages), trims the
 * heap once a minute as fieldgated does, and idles until killed (for up to a day: its token's lifetime), sending one
 * 200-byte reading every 30 s so that the TLS record path stays mapped as in any live gateway.
 * What it leaves out (twin GET and subscriptions, the gateway's own identity, a spool, adapters, timers) costs
 * fieldgated more, never less: its resident memory is the floor of this design on Proton and OpenSSL.
 *
 * Written in C so that no language runtime is counted in the floor. `proton-floor` runs it alone;
 * `proton-floor-swift` runs it on a thread of a Swift program whose runtime does what any Swift daemon's does
 * while idle, so that the two figures' difference is the Swift runtime's share.
 */
#define _GNU_SOURCE
#include "proton_floor.h"

#include <errno.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <proton/codec.h>
#include <proton/condition.h>
#include <proton/connection.h>
#include <proton/delivery.h>
#include <proton/event.h>
#include <proton/link.h>
#include <proton/message.h>
#include <proton/proactor.h>
#include <proton/session.h>
#include <proton/ssl.h>
#include <proton/terminus.h>
#include <proton/transport.h>

enum { LEAVES_PER_SESSION = 100, ATTACHING_AT_ONCE = 32, REQUEST_CREDIT = 10 };

/* fieldgated's link kinds (Sources/Uplink/LeafRuntime.swift, Shard.swift): name prefix, address suffix, direction,
 * settle mode, channel correlation id, the credit a receiver is given once attached. */
static const struct kind {
    const char *prefix, *endpoint;
    bool sender, presettled;
    const char *channel_prefix;
    int credit;
} kinds[6] = {
    {"telemetry", "/messages/events", true, false, NULL, 0},
    {"c2d", "/messages/devicebound", false, false, NULL, 1},
    {"methods-rx", "/methods/devicebound", false, false, "methods:", REQUEST_CREDIT},
    {"methods-tx", "/methods/devicebound", true, true, "methods:", 0},
    {"twin-tx", "/twin", true, true, "twin:", 0},
    {"twin-rx", "/twin", false, false, "twin:", REQUEST_CREDIT},
};

static struct {
    const char *host, *port, *sni, *ca, *policy_name, *policy_key_file, *ready_file, *client_version;
    int leaves, links_per_leaf;
} opt = {"127.0.0.1", "5671", "localhost", NULL, "iothubowner", NULL, NULL, "fieldgate/0.1", 1000, 6};

static pn_proactor_t *proactor;
static pn_connection_t *connection;
static pn_link_t *cbs_sender, *cbs_receiver, *first_telemetry;
static pn_session_t **sessions;
static int *open_links;  /* per leaf: links the hub has attached */
static int next_leaf, attaching, ready;
static bool token_sent, released;
static unsigned wakes;
static char policy_key[256];

static void fail(const char *what) {
    fprintf(stderr, "%s: %s\n", program_invocation_short_name, what);
    exit(1);
}

static void fail_condition(const char *what, pn_condition_t *c) {
    fprintf(stderr, "%s: %s: %s %s\n", program_invocation_short_name, what, c && pn_condition_get_name(c) ? pn_condition_get_name(c) : "",
            c && pn_condition_get_description(c) ? pn_condition_get_description(c) : "");
    exit(1);
}

/* RFC 3986 unreserved characters stay, everything else is %XX (as fieldgated's PercentEncoding). */
static void percent_encode(const char *in, char *out, size_t size) {
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && n + 4 < size; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr("-._~", *p)) {
            out[n++] = (char)*p;
        } else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    out[n] = 0;
}

/* The policy key: one line of base64 (the file keeps it off the command line). */
static void read_policy_key(void) {
    FILE *f = fopen(opt.policy_key_file, "r");
    if (!f) fail("cannot read the policy key file");
    if (!fgets(policy_key, sizeof policy_key, f)) policy_key[0] = 0;
    fclose(f);
    policy_key[strcspn(policy_key, "\r\n")] = 0;
    size_t n = strlen(policy_key);
    if (n == 0 || n % 4 != 0 || n > 172 || strspn(policy_key, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != n)
        fail("the policy key is not one line of base64 (at most 128 bytes)");
}

/* SharedAccessSignature sr=<enc audience>&sig=<enc base64 HMAC-SHA256(key, sr "\n" se)>&se=<expiry>&skn=<enc name>,
 * as fieldgated's SASToken.generate. */
static void sas_token(const char *audience, char *out, size_t size) {
    unsigned char key[129], mac[EVP_MAX_MD_SIZE];
    unsigned int mac_length = 0;
    size_t n = strlen(policy_key);
    int key_length = EVP_DecodeBlock(key, (const unsigned char *)policy_key, (int)n);
    if (key_length <= 0) fail("the policy key is not base64");
    key_length -= (policy_key[n - 1] == '=') + (policy_key[n - 2] == '=');
    char sr[1024], to_sign[1100], sig[128], sig_encoded[256], name[256];
    percent_encode(audience, sr, sizeof sr);
    percent_encode(opt.policy_name, name, sizeof name);
    long long expiry = (long long)time(NULL) + 86400;
    snprintf(to_sign, sizeof to_sign, "%s\n%lld", sr, expiry);
    HMAC(EVP_sha256(), key, key_length, (const unsigned char *)to_sign, strlen(to_sign), mac, &mac_length);
    EVP_EncodeBlock((unsigned char *)sig, mac, (int)mac_length);
    percent_encode(sig, sig_encoded, sizeof sig_encoded);
    snprintf(out, size, "SharedAccessSignature sr=%s&sig=%s&se=%lld&skn=%s", sr, sig_encoded, expiry, name);
}

/* The hub-scope token on $cbs; later calls put the same token again (a renewal, without signing anew). */
static void send_put_token(void) {
    static char audience[300], token[1600];
    static unsigned long long puts;
    if (!token[0]) {
        snprintf(audience, sizeof audience, "%s/devices", opt.sni);
        sas_token(audience, token, sizeof token);
    }
    if (pn_link_credit(cbs_sender) <= 0) return;
    pn_message_t *m = pn_message();
    pn_atom_t id = {.type = PN_ULONG, .u.as_ulong = puts};
    pn_message_set_id(m, id);
    pn_data_t *p = pn_message_properties(m);
    pn_data_put_map(p);
    pn_data_enter(p);
    pn_data_put_string(p, pn_bytes(9, "operation"));
    pn_data_put_string(p, pn_bytes(9, "put-token"));
    pn_data_put_string(p, pn_bytes(4, "type"));
    pn_data_put_string(p, pn_bytes(strlen("servicebus.windows.net:sastoken"), "servicebus.windows.net:sastoken"));
    pn_data_put_string(p, pn_bytes(4, "name"));
    pn_data_put_string(p, pn_bytes(strlen(audience), audience));
    pn_data_exit(p);
    pn_data_put_string(pn_message_body(m), pn_bytes(strlen(token), token));
    char buffer[2560];
    size_t size = sizeof buffer;
    if (pn_message_encode(m, buffer, &size) != 0) fail("cannot encode the put-token");
    pn_message_free(m);
    char tag[24];
    snprintf(tag, sizeof tag, "%llu", puts++);
    pn_delivery(cbs_sender, pn_dtag(tag, strlen(tag)));
    pn_link_send(cbs_sender, buffer, size);
    pn_link_advance(cbs_sender);
}

/* The put-token answer's status-code (application property), or -1. */
static int put_token_status(pn_delivery_t *d) {
    char buffer[4096];
    ssize_t n = pn_link_recv(pn_delivery_link(d), buffer, sizeof buffer);
    if (n < 0) return -1;
    pn_message_t *m = pn_message();
    int status = -1;
    if (pn_message_decode(m, buffer, (size_t)n) == 0) {
        pn_data_t *p = pn_message_properties(m);
        pn_data_rewind(p);
        if (pn_data_next(p) && pn_data_type(p) == PN_MAP) {
            pn_data_enter(p);
            while (pn_data_next(p)) {
                pn_bytes_t key = pn_data_get_string(p);
                if (!pn_data_next(p)) break;
                if (key.size == 11 && memcmp(key.start, "status-code", 11) == 0) status = pn_data_get_int(p);
            }
        }
    }
    pn_message_free(m);
    return status;
}

/* One 200-byte JSON reading on the first leaf's telemetry link, as a gateway sends now and then when idle (a hub
 * that throttles the leaf refuses it: the round trip is what counts). Should the link have no credit, the token is
 * put again instead, which is a round trip too. */
static void send_reading(void) {
    if (!first_telemetry || pn_link_credit(first_telemetry) <= 0) {
        send_put_token();
        return;
    }
    static unsigned long long sent;
    char body[201], tag[24];
    memset(body, 'x', 200);
    memcpy(body, "{\"v\":\"", 6);
    memcpy(body + 198, "\"}", 2);
    body[200] = 0;
    pn_message_t *m = pn_message();
    pn_atom_t id = {.type = PN_ULONG, .u.as_ulong = ++sent};
    pn_message_set_id(m, id);
    pn_message_set_content_type(m, "application/json");
    pn_message_set_content_encoding(m, "utf-8");
    pn_data_put_binary(pn_message_body(m), pn_bytes(200, body));
    char buffer[1024];
    size_t size = sizeof buffer;
    if (pn_message_encode(m, buffer, &size) == 0) {
        snprintf(tag, sizeof tag, "%llu", sent);
        pn_delivery(first_telemetry, pn_dtag(tag, strlen(tag)));
        pn_link_send(first_telemetry, buffer, size);
        pn_link_advance(first_telemetry);
    }
    pn_message_free(m);
}

static void set_properties(pn_link_t *link, const struct kind *k, int leaf) {
    pn_data_t *p = pn_link_properties(link);
    pn_data_put_map(p);
    pn_data_enter(p);
    pn_data_put_symbol(p, pn_bytes(strlen("com.microsoft:client-version"), "com.microsoft:client-version"));
    pn_data_put_string(p, pn_bytes(strlen(opt.client_version), opt.client_version));
    if (k->channel_prefix) {
        /* fieldgated's channel is a random uuid per leaf, the same on its four method and twin links: this one only
         * has its shape and length. */
        char channel[64];
        unsigned h = (unsigned)leaf * 2654435761u;
        snprintf(channel, sizeof channel, "%s%08x-%04x-4%03x-8%03x-%012x", k->channel_prefix, h, h >> 16, h & 0xfff, (h >> 8) & 0xfff, (unsigned)leaf);
        pn_data_put_symbol(p, pn_bytes(strlen("com.microsoft:channel-correlation-id"), "com.microsoft:channel-correlation-id"));
        pn_data_put_string(p, pn_bytes(strlen(channel), channel));
        pn_data_put_symbol(p, pn_bytes(strlen("com.microsoft:api-version"), "com.microsoft:api-version"));
        pn_data_put_string(p, pn_bytes(strlen("2020-09-30"), "2020-09-30"));
    }
    pn_data_exit(p);
}

static void open_leaf(int leaf) {
    int s = leaf / LEAVES_PER_SESSION;
    if (!sessions[s]) {
        sessions[s] = pn_session(connection);
        pn_session_open(sessions[s]);
    }
    char device[64], name[128], address[160], local[128];
    snprintf(device, sizeof device, "bench-%d", leaf);
    for (int i = 0; i < opt.links_per_leaf; i++) {
        const struct kind *k = &kinds[i];
        snprintf(name, sizeof name, "%s-%s-%d", k->prefix, device, leaf + 1);
        snprintf(address, sizeof address, "/devices/%s%s", device, k->endpoint);
        snprintf(local, sizeof local, "%s-%s", k->prefix, device);
        pn_link_t *link = k->sender ? pn_sender(sessions[s], name) : pn_receiver(sessions[s], name);
        if (leaf == 0 && i == 0) first_telemetry = link;
        pn_terminus_set_address(pn_link_target(link), k->sender ? address : local);
        pn_terminus_set_address(pn_link_source(link), k->sender ? local : address);
        set_properties(link, k, leaf);
        if (k->sender) pn_link_set_snd_settle_mode(link, k->presettled ? PN_SND_SETTLED : PN_SND_UNSETTLED);
        pn_link_set_rcv_settle_mode(link, PN_RCV_FIRST);
        pn_link_open(link);
    }
    attaching++;
}

static void admit_leaves(void) {
    while (attaching < ATTACHING_AT_ONCE && next_leaf < opt.leaves) open_leaf(next_leaf++);
}

/* The leaf a link belongs to, from its name "<kind>-bench-<n>-<m>" (the benchmark's devices are bench-0 … bench-N). */
static int leaf_of(pn_link_t *link) {
    const char *name = pn_link_name(link), *b = strstr(name, "bench-");
    return b ? atoi(b + 6) : -1;
}

static void link_opened(pn_link_t *link) {
    if (link == cbs_sender || link == cbs_receiver) return;
    if (!pn_terminus_get_address(pn_link_is_sender(link) ? pn_link_remote_target(link) : pn_link_remote_source(link))) {
        fail_condition("the hub refused a link", pn_link_remote_condition(link));
    }
    int leaf = leaf_of(link);
    if (leaf < 0 || leaf >= opt.leaves) return;
    const char *name = pn_link_name(link);
    for (int i = 0; i < opt.links_per_leaf; i++) {
        size_t length = strlen(kinds[i].prefix);
        if (kinds[i].credit > 0 && strncmp(name, kinds[i].prefix, length) == 0 && name[length] == '-') pn_link_flow(link, kinds[i].credit);
    }
    if (++open_links[leaf] == opt.links_per_leaf) {
        attaching--;
        ready++;
        admit_leaves();
        if (ready == opt.leaves) {
            FILE *f = fopen(opt.ready_file, "w");
            if (!f) fail("cannot write the ready file");
            fputs("attached\n", f);
            fclose(f);
            pn_proactor_set_timeout(proactor, 10000);
        }
    }
}

/* fieldgated's ResidentCode.release: MADV_DONTNEED on file mappings that are not writable and hold no private page. */
static void release_startup_pages(void) {
    malloc_trim(0);
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return;
    char line[512], perms[8] = "", path[300] = "";
    unsigned long start = 0, end = 0;
    long rss = 0, anonymous = 0;
    bool have = false, deleted = false;
    for (;;) {
        bool eof = !fgets(line, sizeof line, f);
        unsigned long s, e;
        char p[8];
        bool header = !eof && sscanf(line, "%lx-%lx %7s", &s, &e, p) == 3;
        if ((eof || header) && have) {
            if (path[0] == '/' && !strchr(perms, 'w') && perms[3] == 'p' && anonymous == 0 && rss > 0 && !deleted)
                madvise((void *)start, end - start, MADV_DONTNEED);
            have = false;
        }
        if (eof) break;
        if (header) {
            start = s;
            end = e;
            strcpy(perms, p);
            path[0] = 0;
            sscanf(line, "%*s %*s %*s %*s %*s %299s", path);
            deleted = strstr(line, "(deleted)") != NULL;
            rss = anonymous = 0;
            have = true;
        } else if (strncmp(line, "Rss:", 4) == 0) {
            rss = atol(line + 4);
        } else if (strncmp(line, "Anonymous:", 10) == 0) {
            anonymous = atol(line + 10);
        }
    }
    fclose(f);
}

static void handle(pn_event_t *e) {
    switch (pn_event_type(e)) {
    case PN_CONNECTION_REMOTE_OPEN: {
        pn_session_t *s = pn_session(connection);
        pn_session_open(s);
        cbs_sender = pn_sender(s, "$cbs-sender");
        pn_terminus_set_address(pn_link_target(cbs_sender), "$cbs");
        pn_terminus_set_address(pn_link_source(cbs_sender), "$cbs-sender");
        pn_link_open(cbs_sender);
        cbs_receiver = pn_receiver(s, "$cbs-receiver");
        pn_terminus_set_address(pn_link_source(cbs_receiver), "$cbs");
        pn_terminus_set_address(pn_link_target(cbs_receiver), "$cbs-receiver");
        pn_link_open(cbs_receiver);
        pn_link_flow(cbs_receiver, 200);
        break;
    }
    case PN_LINK_FLOW:
        if (pn_event_link(e) == cbs_sender && !token_sent && pn_link_credit(cbs_sender) > 0) {
            token_sent = true;
            send_put_token();
        }
        break;
    case PN_LINK_REMOTE_OPEN:
        link_opened(pn_event_link(e));
        break;
    case PN_DELIVERY: {
        pn_delivery_t *d = pn_event_delivery(e);
        pn_link_t *link = pn_delivery_link(d);
        if (link == cbs_receiver && pn_delivery_readable(d) && !pn_delivery_partial(d)) {
            int status = put_token_status(d);
            pn_delivery_update(d, PN_ACCEPTED);
            pn_delivery_settle(d);
            if (status != 200) {
                fprintf(stderr, "proton-floor: put-token answered %d\n", status);
                exit(1);
            }
            pn_link_flow(cbs_receiver, 1);  /* as fieldgated: one more answer for each one taken */
            admit_leaves();
        } else if (pn_link_is_sender(link) && pn_delivery_updated(d)) {
            pn_delivery_settle(d);
        }
        break;
    }
    case PN_LINK_REMOTE_CLOSE:
        fail_condition("the hub detached a link", pn_link_remote_condition(pn_event_link(e)));
        break;
    case PN_TRANSPORT_CLOSED:
        fail_condition("the connection closed", pn_transport_condition(pn_event_transport(e)));
        break;
    case PN_PROACTOR_TIMEOUT:
        /* The connection's own batch does the work: what a timeout batch changes on it is not written out. */
        pn_connection_wake(connection);
        pn_proactor_set_timeout(proactor, 30000);
        break;
    case PN_CONNECTION_WAKE:
        if (!released) {
            released = true;
            release_startup_pages();
        }
        send_reading();
        if (++wakes % 2 == 0) malloc_trim(0);  /* once a minute, as fieldgated's housekeeping */
        break;
    default:
        break;
    }
}

static void usage(void) {
    fputs("usage: proton-floor --port N --ca FILE --policy-key-file FILE --ready-file FILE [--host A] [--sni NAME] [--leaves N]\n"
          "                    [--telemetry-only] [--policy-name NAME] [--client-version V]\n",
          stderr);
    exit(2);
}

void proton_floor_limit_arenas(void) {
    mallopt(M_ARENA_MAX, 1);
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    mallopt(M_TRIM_THRESHOLD, 128 * 1024);
}

int proton_floor_main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--telemetry-only") == 0) { opt.links_per_leaf = 1; continue; }
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (strcmp(a, "--host") == 0) opt.host = v;
        else if (strcmp(a, "--port") == 0) opt.port = v;
        else if (strcmp(a, "--sni") == 0) opt.sni = v;
        else if (strcmp(a, "--ca") == 0) opt.ca = v;
        else if (strcmp(a, "--leaves") == 0) opt.leaves = atoi(v);
        else if (strcmp(a, "--policy-name") == 0) opt.policy_name = v;
        else if (strcmp(a, "--policy-key-file") == 0) opt.policy_key_file = v;
        else if (strcmp(a, "--ready-file") == 0) opt.ready_file = v;
        else if (strcmp(a, "--client-version") == 0) opt.client_version = v;
        else usage();
    }
    if (!opt.ca || !opt.policy_key_file || !opt.ready_file || opt.leaves <= 0) usage();
    proton_floor_limit_arenas();
    read_policy_key();
    sessions = calloc((size_t)opt.leaves / LEAVES_PER_SESSION + 1, sizeof *sessions);
    open_links = calloc((size_t)opt.leaves, sizeof *open_links);
    if (!sessions || !open_links) fail("out of memory");

    proactor = pn_proactor();
    connection = pn_connection();
    pn_connection_set_container(connection, "proton-floor");
    pn_connection_set_hostname(connection, opt.sni);
    pn_transport_t *t = pn_transport();
    pn_transport_set_idle_timeout(t, 480000);
    pn_transport_set_max_frame(t, 65536);
    pn_ssl_domain_t *domain = pn_ssl_domain(PN_SSL_MODE_CLIENT);
    if (pn_ssl_domain_set_trusted_ca_db(domain, opt.ca) != 0) fail("cannot read the CA file");
    pn_ssl_domain_set_peer_authentication(domain, PN_SSL_VERIFY_PEER_NAME, NULL);
    pn_ssl_t *ssl = pn_ssl(t);
    if (pn_ssl_init(ssl, domain, NULL) != 0) fail("cannot set up TLS");
    pn_ssl_set_peer_hostname(ssl, opt.sni);
    pn_ssl_domain_free(domain);
    /* No pn_sasl(): the plain AMQP header after TLS, as fieldgated's uplink sends it (authentication is CBS). */
    pn_connection_open(connection);
    char address[PN_MAX_ADDR];
    pn_proactor_addr(address, sizeof address, opt.host, opt.port);
    pn_proactor_connect2(proactor, connection, t, address);
    for (;;) {
        pn_event_batch_t *batch = pn_proactor_wait(proactor);
        pn_event_t *e;
        while ((e = pn_event_batch_next(batch))) handle(e);
        pn_proactor_done(proactor, batch);
    }
}
