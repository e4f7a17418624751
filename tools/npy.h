#pragma once
/* NumPy .npy files (format version 1.0) written as a stream, for model
 * exports (docs/export-format.md).
 *
 * States: open --append (rows as they come)--> open --finish--> done (or
 * --abort--> removed). The shape is known only at the end, so the header is
 * written twice: a placeholder at open, then the real one in place by
 * ps_npy_finish(). Its length is fixed at 128 bytes, enough for any uint64
 * row count and the widest row, so rewriting it never moves the data: the
 * dict is padded with spaces before its final '\n', as NumPy's own writer
 * pads, and the data starts at byte 128 (a multiple of 64). Memory does not
 * depend on the number of rows: stdio buffers the appends.
 *
 * Little-endian hosts only (the descrs say '<'); the build refuses others. */

#include <stddef.h>
#include <stdint.h>

typedef struct ps_npy ps_npy;

typedef enum { PS_NPY_U64, PS_NPY_F32 } ps_npy_type;

/* Create path (which must not exist) for rows of `cols` items of type
 * type; cols = 0 makes a 1-D array (one item per row). */
int ps_npy_open(const char *path, ps_npy_type type, uint32_t cols, ps_npy **ret_npy, char *err,
                size_t errlen);
/* Append n rows (n * max(cols, 1) items). */
int ps_npy_append(ps_npy *f, const void *rows, size_t n);
/* Write the real header, flush, fsync and close; frees f, also on error. */
int ps_npy_finish(ps_npy *f, char *err, size_t errlen);
/* Close and remove the file; frees f. Accepts NULL. */
void ps_npy_abort(ps_npy *f);
