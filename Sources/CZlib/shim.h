#ifndef FIELDGATE_CZLIB_SHIM_H
#define FIELDGATE_CZLIB_SHIM_H
#include <zlib.h>
/* deflateInit2 and inflateInit2 are macros (they pass the library version and the stream's size): wrapped for
 * Swift. 15 + 16 asks for the gzip format (RFC 1952) rather than zlib's. */
static inline int fg_deflate_init_gzip(z_stream *s, int level) {
    return deflateInit2(s, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
}
static inline int fg_inflate_init_gzip(z_stream *s) { return inflateInit2(s, 15 + 16); }
#endif
