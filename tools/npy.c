#include "npy.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the .npy descrs written are '<'");

#define HEADER_LEN 128           /* magic, version, length, dict: data starts here */
#define PREAMBLE_LEN 10          /* "\x93NUMPY", 1, 0, uint16 little-endian dict length */

struct ps_npy {
    FILE *fp;
    char *path;                  /* owned */
    ps_npy_type type;
    uint32_t cols;
    uint64_t rows;
    int error;                   /* first append error (-errno), reported by finish */
};

static size_t item_size(ps_npy_type t) { return t == PS_NPY_U64 ? 8 : 4; }

/* The 128-byte header for the shape (rows[, cols]). */
static void header(const ps_npy *f, uint64_t rows, char out[HEADER_LEN]) {
    char shape[64];
    if (f->cols)
        snprintf(shape, sizeof(shape), "(%" PRIu64 ", %" PRIu32 ")", rows, f->cols);
    else
        snprintf(shape, sizeof(shape), "(%" PRIu64 ",)", rows);
    char dict[HEADER_LEN];
    int n = snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                     f->type == PS_NPY_U64 ? "<u8" : "<f4", shape);
    memset(out, ' ', HEADER_LEN);
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    uint16_t dlen = HEADER_LEN - PREAMBLE_LEN;
    out[8] = (char)(dlen & 0xff);
    out[9] = (char)(dlen >> 8);
    memcpy(out + PREAMBLE_LEN, dict, (size_t)n);
    out[HEADER_LEN - 1] = '\n';
}

int ps_npy_open(const char *path, ps_npy_type type, uint32_t cols, ps_npy **ret_npy, char *err,
                size_t errlen) {
    ps_npy *f = calloc(1, sizeof(*f));
    if (!f || !(f->path = strdup(path))) {
        free(f);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    f->type = type;
    f->cols = cols;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || !(f->fp = fdopen(fd, "w"))) {
        int r = -errno;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(path);
        }
        free(f->path);
        free(f);
        return r;
    }
    char h[HEADER_LEN];
    header(f, 0, h);
    fwrite(h, 1, HEADER_LEN, f->fp);
    *ret_npy = f;
    return 0;
}

int ps_npy_append(ps_npy *f, const void *rows, size_t n) {
    size_t items = n * (f->cols ? f->cols : 1);
    if (n && fwrite(rows, item_size(f->type), items, f->fp) != items && !f->error)
        f->error = -(errno ? errno : EIO);
    f->rows += n;
    return f->error;
}

static void release(ps_npy *f) {
    free(f->path);
    free(f);
}

int ps_npy_finish(ps_npy *f, char *err, size_t errlen) {
    char h[HEADER_LEN];
    header(f, f->rows, h);
    int r = f->error;
    if (r == 0 && (fflush(f->fp) != 0 || pwrite(fileno(f->fp), h, HEADER_LEN, 0) != HEADER_LEN ||
                   fsync(fileno(f->fp)) != 0))
        r = -errno;
    if (fclose(f->fp) != 0 && r == 0)
        r = -errno;
    if (r < 0) {
        snprintf(err, errlen, "%s: %s", f->path, strerror(-r));
        unlink(f->path);
    }
    release(f);
    return r;
}

void ps_npy_abort(ps_npy *f) {
    if (!f)
        return;
    fclose(f->fp);
    unlink(f->path);
    release(f);
}
