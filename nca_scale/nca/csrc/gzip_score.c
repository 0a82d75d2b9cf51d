/* The reference's gzip complexity of many rows at once (complexity.py): each row's bytes compressed with
 * gzip level 9 (zlib: windowBits 31, memLevel 8, default strategy, as Python's zlib.compress), score =
 * compressed size / raw size. One deflate stream is reset per row instead of set up: setting one up
 * (allocating and clearing ~270 KB) cost 4x the compression of a 1,440-byte probe. deflateReset gives
 * the bytes a fresh stream gives, so scores are unchanged (tests/nca/test_nca_native.py). */
#include <stdint.h>
#include <stdlib.h>
#include <zlib.h>

const char *nca_zlib_version(void) { return zlibVersion(); }

/* rows: n rows of `size` bytes each, contiguous. Returns 0, or a zlib error code (the caller falls back). */
int gzip_ratios(const unsigned char *rows, int64_t n, int64_t size, double *out)
{
    z_stream s = {0};
    int rc = deflateInit2(&s, 9, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY);
    if (rc != Z_OK)
        return rc;
    const uLong bound = deflateBound(&s, (uLong)size);
    unsigned char *buf = malloc(bound);
    if (!buf) {
        deflateEnd(&s);
        return Z_MEM_ERROR;
    }
    for (int64_t i = 0; i < n && rc == Z_OK; i++) {
        rc = deflateReset(&s);
        if (rc != Z_OK)
            break;
        s.next_in = (unsigned char *)rows + i * size;
        s.avail_in = (uInt)size;
        s.next_out = buf;
        s.avail_out = (uInt)bound;
        rc = deflate(&s, Z_FINISH);
        if (rc != Z_STREAM_END)
            break;
        rc = Z_OK;
        out[i] = (double)s.total_out / (double)size;
    }
    free(buf);
    deflateEnd(&s);
    return rc;
}
