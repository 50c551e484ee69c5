#ifndef FIELDGATE_CLIBCRYPTO_SHIM_H
#define FIELDGATE_CLIBCRYPTO_SHIM_H
/* OpenSSL's libcrypto: HMAC-SHA256 for SAS tokens, DPS key derivation and UDP datagram signatures. The daemon
 * links it already (Proton's TLS), so this costs no second crypto library in the binary. */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#endif
