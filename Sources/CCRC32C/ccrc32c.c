#include "ccrc32c.h"
#include <pthread.h>
#include <string.h>

/* The CRC instruction has a latency of about three cycles but a throughput of one a cycle, so one dependent chain
   uses a third of the unit. Buffers of at least three lanes are checksummed as three independent chains over
   adjacent LANE-byte blocks, then combined: the CRC register is linear, so
       crc(A|B) = shift(crc(A), |B|) ^ crc_from_zero(B)
   where shift(c, n) is the register after n zero bytes. shift for n = LANE is a 32×32 bit matrix, applied
   through four 256-entry tables built once from the instruction itself. */
#define LANE 256

static uint32_t shift_tables[4][256];
static pthread_once_t shift_tables_once = PTHREAD_ONCE_INIT;

static inline uint32_t shift_lane(uint32_t c) {
    return shift_tables[0][c & 0xff] ^ shift_tables[1][(c >> 8) & 0xff] ^ shift_tables[2][(c >> 16) & 0xff]
        ^ shift_tables[3][c >> 24];
}

static inline uint64_t load64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

#if defined(__x86_64__)
#include <cpuid.h>
#define CRC_TARGET __attribute__((target("sse4.2")))
#define CRC64(c, v) __builtin_ia32_crc32di((c), (v))
#define CRC32(c, v) __builtin_ia32_crc32si((c), (v))
#define CRC16(c, v) __builtin_ia32_crc32hi((c), (v))
#define CRC8(c, b) __builtin_ia32_crc32qi((c), (b))

int ccrc32c_hardware_available(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    return (c & bit_SSE4_2) != 0;
}
#elif defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#define CRC_TARGET __attribute__((target("crc")))
/* clang's names (Swift builds C with clang; GCC's __builtin_aarch64_crc32c* do not exist there). */
#define CRC64(c, v) __builtin_arm_crc32cd((uint32_t)(c), (v))
#define CRC32(c, v) __builtin_arm_crc32cw((c), (v))
#define CRC16(c, v) __builtin_arm_crc32ch((c), (v))
#define CRC8(c, b) __builtin_arm_crc32cb((c), (b))

int ccrc32c_hardware_available(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#endif

#ifdef CRC_TARGET
/* One chain, four words a turn, and the last seven bytes as at most a word, a half-word and a byte: ~20
   instructions fewer for a spool record (~250 bytes) than a word a turn with a byte loop after. */
CRC_TARGET static uint32_t crc_serial(uint32_t crc, const unsigned char *p, size_t len) {
    uint64_t c = crc;
    for (; len >= 32; p += 32, len -= 32) {
        c = CRC64(c, load64(p));
        c = CRC64(c, load64(p + 8));
        c = CRC64(c, load64(p + 16));
        c = CRC64(c, load64(p + 24));
    }
    for (; len >= 8; p += 8, len -= 8) c = CRC64(c, load64(p));
    uint32_t c32 = (uint32_t)c;
    if (len & 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        c32 = CRC32(c32, v);
        p += 4;
    }
    if (len & 2) {
        uint16_t v;
        memcpy(&v, p, 2);
        c32 = CRC16(c32, v);
        p += 2;
    }
    if (len & 1) c32 = CRC8(c32, *p);
    return c32;
}

CRC_TARGET static void build_shift_tables(void) {
    static const unsigned char zeros[LANE];
    uint32_t column[32];
    for (int bit = 0; bit < 32; bit++) column[bit] = crc_serial(1u << bit, zeros, LANE);
    for (int k = 0; k < 4; k++) {
        for (int byte = 0; byte < 256; byte++) {
            uint32_t v = 0;
            for (int j = 0; j < 8; j++)
                if (byte & (1 << j)) v ^= column[8 * k + j];
            shift_tables[k][byte] = v;
        }
    }
}

CRC_TARGET uint32_t ccrc32c_hardware_update(uint32_t crc, const void *data, size_t len) {
    const unsigned char *p = data;
    if (len >= 3 * LANE) {
        pthread_once(&shift_tables_once, build_shift_tables);
        do {
            uint64_t a = crc, b = 0, c = 0;
            for (size_t i = 0; i < LANE; i += 8) {
                a = CRC64(a, load64(p + i));
                b = CRC64(b, load64(p + LANE + i));
                c = CRC64(c, load64(p + 2 * LANE + i));
            }
            crc = shift_lane(shift_lane((uint32_t)a) ^ (uint32_t)b) ^ (uint32_t)c;
            p += 3 * LANE;
            len -= 3 * LANE;
        } while (len >= 3 * LANE);
    }
    return crc_serial(crc, p, len);
}
#else
int ccrc32c_hardware_available(void) { return 0; }
uint32_t ccrc32c_hardware_update(uint32_t crc, const void *data, size_t len) { (void)data; (void)len; return crc; }
#endif

int ccrc32c_has_hardware;

__attribute__((constructor)) static void ccrc32c_detect(void) { ccrc32c_has_hardware = ccrc32c_hardware_available(); }
