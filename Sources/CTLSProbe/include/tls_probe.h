#ifndef FIELDGATE_TLS_PROBE_H
#define FIELDGATE_TLS_PROBE_H
/* One TLS handshake with OpenSSL over a connected socket, for `fieldgatectl check`: did it complete, does the
 * hub's certificate chain to the trusted CAs and name the host, and when does it expire. The same library and
 * rules as the uplink's TLS (Proton over OpenSSL); nothing is sent after the handshake. */
typedef struct {
    int handshake_ok;        /* 1 when the handshake completed */
    long verify_result;      /* X509_V_OK (0) when the chain and the host name verified */
    char verify_text[160];
    char error_text[200];    /* why the handshake failed */
    char subject[256];
    char issuer[256];
    long long not_before;    /* Unix seconds */
    long long not_after;
    char protocol[32];
} fg_tls_probe_result;

/* `ca_file` NULL: the system's trust store. Returns handshake_ok. */
int fg_tls_probe(int fd, const char *host, const char *ca_file, fg_tls_probe_result *out);
#endif
