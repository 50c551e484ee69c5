#ifndef FIELDGATE_CCRC32C_H
#define FIELDGATE_CCRC32C_H
#include <stddef.h>
#include <stdint.h>

/* 1 when the CPU has CRC32C instructions (SSE4.2 on x86-64, the CRC extension on arm64). */
int ccrc32c_hardware_available(void);

/* ccrc32c_hardware_available(), asked once when the program loads: a plain load for callers that check it for every
   checksum (a Swift `static let` costs a `swift_once` call each time). */
extern int ccrc32c_has_hardware;
static inline int ccrc32c_hardware(void) { return ccrc32c_has_hardware; }

/* Castagnoli CRC of `len` bytes, continuing from `crc` (pass the already-inverted running value, as the
   software path does). Only call when ccrc32c_hardware_available() returned 1. */
uint32_t ccrc32c_hardware_update(uint32_t crc, const void *data, size_t len);
#endif
