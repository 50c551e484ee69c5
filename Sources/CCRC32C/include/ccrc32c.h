#ifndef FIELDGATE_CCRC32C_H
#define FIELDGATE_CCRC32C_H
#include <stddef.h>
#include <stdint.h>

/* 1 when the CPU has CRC32C instructions (SSE4.2 on x86-64, the CRC extension on arm64). */
int ccrc32c_hardware_available(void);

/* Castagnoli CRC of `len` bytes, continuing from `crc` (pass the already-inverted running value, as the
   software path does). Only call when ccrc32c_hardware_available() returned 1. */
uint32_t ccrc32c_hardware_update(uint32_t crc, const void *data, size_t len);
#endif
