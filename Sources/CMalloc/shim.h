#ifndef FIELDGATE_CMALLOC_SHIM_H
#define FIELDGATE_CMALLOC_SHIM_H
/* glibc's allocator tuning, which Swift's Glibc module does not expose (malloc.h). */
#include <malloc.h>

/* Returns free memory at the top and inside every arena to the kernel (MADV_DONTNEED); 1 when some was. */
static inline int fg_malloc_trim(void) { return malloc_trim(0); }

/* At most `n` malloc arenas: each thread otherwise gets its own, and every arena keeps its freed pages. */
static inline int fg_malloc_limit_arenas(int n) { return mallopt(M_ARENA_MAX, n); }
/* Fixed thresholds: blocks from 128 KiB up are mmap'd and go back to the kernel when freed, and free memory above
 * 128 KiB at the top of the heap is trimmed. Setting them turns off glibc's dynamic threshold, which otherwise
 * rises after the first large free and leaves later large buffers to fragment the heap. */
static inline void fg_malloc_fix_thresholds(void) {
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    mallopt(M_TRIM_THRESHOLD, 128 * 1024);
}
#endif
