#include "reader.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"

#define CHUNK (1u << 20)

typedef struct file_entry {
    char *path;                  /* owned; "-" for stdin */
    size_t input;                /* which input it came from */
    uint64_t size;               /* when listed (progress estimates only) */
    uint64_t before;             /* sizes of the files listed before it */
} file_entry;

struct ps_reader {
    ps_reader_options o;
    file_entry *files;
    size_t nfiles, cap;

    size_t cur;                  /* index of the open (or next) file */
    int fd;
    ino_t ino;
    char *buf;
    size_t start, end, bufcap;
    bool eof;                    /* read() returned 0 on the current fd */
    bool skipping;               /* inside an overlong line */
    uint64_t offset;             /* file offset of buf[start] */
    uint64_t lineno;             /* lines consumed in the current file */
    uint64_t lines;              /* lines consumed in total */
    char *header;                /* a resumed file's header, returned first */
    size_t header_len;
    bool header_pending;
    ps_kafka *kafka;             /* a kafka:// input instead of files */
};

static bool is_glob(const char *s) { return strpbrk(s, "*?[") != NULL; }

static bool have_file(const ps_reader *r, const char *path) {
    for (size_t i = 0; i < r->nfiles; i++)
        if (!strcmp(r->files[i].path, path))
            return true;
    return false;
}

static int add_file(ps_reader *r, const char *path, size_t input) {
    if (r->nfiles == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 16;
        file_entry *f = realloc(r->files, cap * sizeof(*f));
        if (!f)
            return -ENOMEM;
        r->files = f;
        r->cap = cap;
    }
    char *p = strdup(path);
    if (!p)
        return -ENOMEM;
    struct stat st;
    uint64_t size = strcmp(path, "-") && stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
    uint64_t before = r->nfiles ? r->files[r->nfiles - 1].before + r->files[r->nfiles - 1].size : 0;
    r->files[r->nfiles++] = (file_entry){p, input, size, before};
    return 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The files one input stands for, in name order, that are not listed yet. */
static int expand(ps_reader *r, size_t input, size_t *ret_added) {
    const char *in = r->o.inputs[input];
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct stat st;
    *ret_added = 0;
    if (!strcmp(in, "-")) {
        if (!have_file(r, "-"))
            rc = add_file(r, "-", input), *ret_added += rc == 0;
        return rc;
    }
    if (is_glob(in)) {
        glob_t g;
        int gr = glob(in, 0, NULL, &g);
        if (gr == 0) {
            for (size_t i = 0; i < g.gl_pathc; i++) {
                if (stat(g.gl_pathv[i], &st) == 0 && S_ISREG(st.st_mode) && !have_file(r, g.gl_pathv[i]) &&
                    (rc = add_file(r, g.gl_pathv[i], input)) == 0)
                    (*ret_added)++;
            }
            globfree(&g);
        }
        return rc; /* glob() sorts */
    }
    if (stat(in, &st) < 0)
        return -errno;
    if (!S_ISDIR(st.st_mode)) {
        if (!have_file(r, in) && (rc = add_file(r, in, input)) == 0)
            (*ret_added)++;
        return rc;
    }
    DIR *d = opendir(in);
    if (!d)
        return -errno;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", in, e->d_name);
        if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || have_file(r, path))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **g = realloc(names, cap * sizeof(char *));
            if (!g) {
                rc = -ENOMEM;
                break;
            }
            names = g;
        }
        if (!(names[n] = strdup(path))) {
            rc = -ENOMEM;
            break;
        }
        n++;
    }
    closedir(d);
    if (n > 1)
        qsort(names, n, sizeof(char *), cmp_str);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0 && (rc = add_file(r, names[i], input)) == 0)
            (*ret_added)++;
        free(names[i]);
    }
    free(names);
    return rc;
}

int ps_reader_new(const ps_reader_options *opts, ps_reader **ret_reader, char *err, size_t errlen) {
    ps_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->o = *opts;
    if (!r->o.max_line)
        r->o.max_line = 1u << 20;
    if (!r->o.poll_ms)
        r->o.poll_ms = 100;
    if (!r->o.num_workers)
        r->o.num_workers = 1;
    r->fd = -1;
    r->bufcap = r->o.max_line + CHUNK;
    r->buf = malloc(r->bufcap);
    if (!r->buf) {
        ps_reader_free(r);
        return -ENOMEM;
    }
    if (opts->ninputs == 0) {
        snprintf(err, errlen, "no input given");
        ps_reader_free(r);
        return -EINVAL;
    }
    for (size_t i = 0; i < opts->ninputs; i++) {
        if (ps_kafka_is_url(opts->inputs[i]) && opts->ninputs > 1) {
            snprintf(err, errlen, "%s: a kafka:// input must be the only input", opts->inputs[i]);
            ps_reader_free(r);
            return PS_ECONFIG;
        }
    }
    if (ps_kafka_is_url(opts->inputs[0])) {
        ps_kafka_options ko = {.url = opts->inputs[0],
                               .group = opts->kafka_group ? opts->kafka_group : "ctrps",
                               .properties = opts->kafka_properties,
                               .nproperties = opts->nkafka_properties,
                               .worker_index = r->o.worker_index,
                               .num_workers = r->o.num_workers,
                               .follow = opts->follow,
                               .max_line = r->o.max_line,
                               .stop = opts->stop,
                               .quit = opts->quit};
        int rc = ps_kafka_new(&ko, &r->kafka, err, errlen);
        if (rc < 0) {
            ps_reader_free(r);
            return rc;
        }
        *ret_reader = r;
        return 0;
    }
    for (size_t i = 0; i < opts->ninputs; i++) {
        size_t added;
        int rc = expand(r, i, &added);
        const char *in = opts->inputs[i];
        bool may_fill_later = opts->follow && (is_glob(in) || rc == 0);
        if (rc < 0 || (added == 0 && !may_fill_later && strcmp(in, "-"))) {
            snprintf(err, errlen, "%s: %s", in,
                     rc < 0 ? strerror(-rc) : "matches no file");
            ps_reader_free(r);
            return rc < 0 ? rc : -ENOENT;
        }
    }
    *ret_reader = r;
    return 0;
}

void ps_reader_free(ps_reader *r) {
    if (!r)
        return;
    if (r->fd > 0)
        close(r->fd);
    for (size_t i = 0; i < r->nfiles; i++)
        free(r->files[i].path);
    free(r->files);
    free(r->buf);
    free(r->header);
    ps_kafka_free(r->kafka);
    free(r);
}

bool ps_reader_seekable(const ps_reader *r) { return !r->kafka && !have_file(r, "-"); }

bool ps_reader_is_kafka(const ps_reader *r) { return r->kafka != NULL; }

int ps_reader_commit(ps_reader *r, const ps_reader_pos *pos, bool sync, char *err, size_t errlen) {
    return r->kafka && pos->kafka.n ? ps_kafka_commit(r->kafka, &pos->kafka, sync, err, errlen) : 0;
}

static void close_current(ps_reader *r) {
    if (r->fd > 0)
        close(r->fd);
    r->fd = -1;
    r->start = r->end = 0;
    r->eof = false;
    r->skipping = false;
}

static int open_current(ps_reader *r, uint64_t offset, char *err, size_t errlen) {
    const char *path = r->files[r->cur].path;
    if (!strcmp(path, "-")) {
        r->fd = 0;
    } else {
        r->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (r->fd < 0) {
            int e = errno;
            snprintf(err, errlen, "%s: %s", path, strerror(e));
            return -e;
        }
        struct stat st;
        if (fstat(r->fd, &st) == 0)
            r->ino = st.st_ino;
        if (offset && lseek(r->fd, (off_t)offset, SEEK_SET) < 0) {
            int e = errno;
            snprintf(err, errlen, "%s: seek: %s", path, strerror(e));
            return -e;
        }
    }
    r->offset = offset;
    r->start = r->end = 0;
    r->eof = false;
    return 0;
}

static void sleep_ms(uint32_t ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static bool stopped(const ps_reader *r) {
    return (r->o.stop && *r->o.stop) || (r->o.quit && *r->o.quit);
}

/* Follow mode, at the end of the last file: has it been replaced or cut? */
static bool rotated(ps_reader *r) {
    const char *path = r->files[r->cur].path;
    struct stat st;
    if (!strcmp(path, "-") || stat(path, &st) < 0)
        return false;
    return st.st_ino != r->ino || (uint64_t)st.st_size < r->offset + (r->end - r->start);
}

static bool find_new_files(ps_reader *r) {
    size_t before = r->nfiles;
    for (size_t i = 0; i < r->o.ninputs; i++) {
        size_t added;
        expand(r, i, &added);
    }
    return r->nfiles > before;
}

/* Consume one line [start, start+len) plus its terminator (term bytes). */
static void consume(ps_reader *r, size_t len, size_t term) {
    r->start += len + term;
    r->offset += len + term;
    r->lineno++;
    r->lines++;
}

static bool mine(const ps_reader *r) {
    return (r->lines - 1) % r->o.num_workers == r->o.worker_index;
}

/* With headers, line 1 of a file is everybody's and counts in no share. */
static bool is_header(const ps_reader *r) { return r->o.headers && r->lineno == 1; }

int ps_reader_next(ps_reader *r, const char **ret_line, size_t *ret_len, const char **ret_file,
                   uint64_t *ret_lineno, char *err, size_t errlen) {
    if (r->kafka) {
        int rc = ps_kafka_next(r->kafka, ret_line, ret_len, ret_file, ret_lineno, err, errlen);
        if (rc == 1)
            r->lines++;
        return rc;
    }
    if (r->header_pending) {
        r->header_pending = false;
        *ret_line = r->header;
        *ret_len = r->header_len;
        *ret_file = r->files[r->cur].path;
        *ret_lineno = 1;
        return 2;
    }
    for (;;) {
        if (r->fd < 0) {
            if (r->cur >= r->nfiles) {
                if (!r->o.follow || stopped(r))
                    return 0;
                if (!find_new_files(r)) {
                    sleep_ms(r->o.poll_ms);
                    if (r->o.report_idle)
                        return 3;
                }
                continue;
            }
            int rc = open_current(r, 0, err, errlen);
            r->lineno = 0;
            if (rc < 0)
                return rc;
        }
        char *base = r->buf + r->start;
        size_t avail = r->end - r->start;
        char *nl = avail ? memchr(base, '\n', avail) : NULL;
        if (nl) {
            size_t len = (size_t)(nl - base);
            bool was_skipping = r->skipping;
            r->skipping = false;
            consume(r, len, 1);
            bool header = is_header(r);
            if (header)
                r->lines--;
            else if (!mine(r))
                continue;
            *ret_file = r->files[r->cur].path;
            *ret_lineno = r->lineno;
            if (was_skipping || len > r->o.max_line)
                return PS_EPARSE;
            if (len && base[len - 1] == '\r')
                len--;
            *ret_line = base;
            *ret_len = len;
            return header ? 2 : 1;
        }
        if (avail > r->o.max_line) {
            /* Overlong: drop what we have and keep dropping to the newline. */
            r->offset += avail;
            r->start = r->end = 0;
            r->skipping = true;
            continue;
        }
        if (!r->eof) {
            if (r->start > 0) {
                memmove(r->buf, r->buf + r->start, avail);
                r->start = 0;
                r->end = avail;
            }
            ssize_t n = read(r->fd, r->buf + r->end, r->bufcap - r->end);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                int e = errno;
                snprintf(err, errlen, "%s: %s", r->files[r->cur].path, strerror(e));
                return -e;
            }
            if (n == 0)
                r->eof = true;
            r->end += (size_t)n;
            continue;
        }
        /* End of this file. */
        bool last = r->cur + 1 >= r->nfiles;
        if (r->o.follow && last) {
            if (rotated(r)) {
                close_current(r); /* reopen the new file from its start */
                r->lineno = 0;
                continue;
            }
            if (!find_new_files(r)) {
                if (stopped(r))
                    return 0; /* a partial last line is not a line yet */
                sleep_ms(r->o.poll_ms);
                r->eof = false; /* read again: the file may have grown */
                if (r->o.report_idle)
                    return 3;
                continue;
            }
            last = false;
        }
        if (avail > 0) {
            /* A final line without its newline. */
            bool was_skipping = r->skipping;
            r->skipping = false;
            base = r->buf + r->start;
            consume(r, avail, 0);
            bool header = is_header(r);
            if (header)
                r->lines--;
            if (header || mine(r)) {
                *ret_file = r->files[r->cur].path;
                *ret_lineno = r->lineno;
                if (was_skipping)
                    return PS_EPARSE;
                size_t len = avail;
                if (len && base[len - 1] == '\r')
                    len--;
                *ret_line = base;
                *ret_len = len;
                return header ? 2 : 1;
            }
            continue;
        }
        close_current(r);
        r->cur++;
    }
}

int ps_reader_rewind(ps_reader *r) {
    if (!ps_reader_seekable(r))
        return -ESPIPE;
    close_current(r);
    r->cur = 0;
    r->lineno = 0;
    r->lines = 0;
    return 0;
}

void ps_reader_position(const ps_reader *r, ps_reader_pos *ret) {
    memset(ret, 0, sizeof(*ret));
    if (r->kafka)
        ps_kafka_position(r->kafka, &ret->kafka);
    ret->file = (uint32_t)r->cur;
    ret->offset = r->fd >= 0 ? r->offset : 0;
    ret->lines = r->lines;
}

int ps_reader_progress(const ps_reader *r, const ps_reader_pos *pos, uint64_t *ret_done,
                       uint64_t *ret_total) {
    if (r->kafka)
        return ps_kafka_progress(r->kafka, &pos->kafka, ret_done, ret_total);
    if (r->o.follow || !ps_reader_seekable(r))
        return -ESPIPE;
    uint64_t total = r->nfiles ? r->files[r->nfiles - 1].before + r->files[r->nfiles - 1].size : 0;
    uint64_t done = total;
    if (pos->file < r->nfiles) {
        const file_entry *f = &r->files[pos->file];
        done = f->before + (pos->offset < f->size ? pos->offset : f->size);
    }
    *ret_done = done;
    *ret_total = total;
    return 0;
}

int ps_reader_seek(ps_reader *r, const ps_reader_pos *pos, char *err, size_t errlen) {
    if (r->kafka || pos->kafka.n) {
        if (!r->kafka || !pos->kafka.n) {
            snprintf(err, errlen, "the position is of %s input than this reader's",
                     r->kafka ? "a file" : "a kafka");
            return PS_ECONFIG;
        }
        r->lines = pos->lines;
        return ps_kafka_seek(r->kafka, &pos->kafka, err, errlen);
    }
    close_current(r);
    r->lines = pos->lines;
    if (!ps_reader_seekable(r)) {
        /* stdin: skip the lines already consumed. */
        uint64_t target = pos->lines;
        r->lines = 0;
        r->cur = 0;
        while (r->lines < target) {
            const char *line, *file;
            size_t len;
            uint64_t lineno;
            int rc = ps_reader_next(r, &line, &len, &file, &lineno, err, errlen);
            if (rc == 0) {
                snprintf(err, errlen, "stdin ended after %llu of %llu lines to skip",
                         (unsigned long long)r->lines, (unsigned long long)target);
                return -EINVAL;
            }
            if (rc < 0 && rc != PS_EPARSE)
                return rc;
        }
        return 0;
    }
    if (pos->file > r->nfiles) {
        snprintf(err, errlen, "position names file %u of %zu", pos->file, r->nfiles);
        return -EINVAL;
    }
    r->cur = pos->file;
    if (r->cur == r->nfiles)
        return 0;
    int rc = open_current(r, pos->offset, err, errlen);
    if (rc < 0)
        return rc;
    /* Line numbers in messages: count the newlines before the offset; and a
     * resumed CSV file's header is needed again. */
    r->lineno = 0;
    int fd = open(r->files[r->cur].path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        uint64_t left = pos->offset;
        bool first = true;
        while (left > 0) {
            ssize_t n = read(fd, r->buf, left < r->bufcap ? left : r->bufcap);
            if (n <= 0)
                break;
            if (first && r->o.headers) {
                char *nl = memchr(r->buf, '\n', (size_t)n);
                size_t hl = nl ? (size_t)(nl - r->buf) : (size_t)n;
                if (hl && r->buf[hl - 1] == '\r')
                    hl--;
                free(r->header);
                r->header = malloc(hl + 1);
                if (r->header) {
                    memcpy(r->header, r->buf, hl);
                    r->header_len = hl;
                    r->header_pending = true;
                }
            }
            first = false;
            for (ssize_t i = 0; i < n; i++)
                r->lineno += r->buf[i] == '\n';
            left -= (uint64_t)n;
        }
        close(fd);
    }
    return 0;
}
