#ifndef FIELDGATE_CMALLOC_SHIM_H
#define FIELDGATE_CMALLOC_SHIM_H
/* glibc's allocator tuning, which Swift's Glibc module does not expose (malloc.h). */
#include <malloc.h>

/* Returns free memory at the top and inside every arena to the kernel (MADV_DONTNEED); 1 when some was. */
static inline int fg_malloc_trim(void) { return malloc_trim(0); }

/* At most `n` malloc arenas: each thread otherwise gets its own, and every arena keeps its freed pages. */
static inline int fg_malloc_limit_arenas(int n) { return mallopt(M_ARENA_MAX, n); }
#endif
