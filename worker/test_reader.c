#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "reader.h"

static char dir[64];

static void setup(void) {
    snprintf(dir, sizeof(dir), "/tmp/ctrps-reader-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

static void write_file(const char *name, const char *text) {
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

static void append_file(const char *name, const char *text) {
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "a");
    fputs(text, f);
    fclose(f);
}

/* Read everything; lines joined with '|', overlong lines as "<long@N>". */
static void read_all(ps_reader *r, char *out, size_t outlen) {
    out[0] = '\0';
    const char *line, *file;
    size_t len;
    uint64_t lineno;
    char err[256];
    int rc;
    while ((rc = ps_reader_next(r, &line, &len, &file, &lineno, err, sizeof(err))) != 0) {
        size_t n = strlen(out);
        if (rc == PS_EPARSE)
            snprintf(out + n, outlen - n, "<long@%llu>|", (unsigned long long)lineno);
        else {
            cr_assert_eq(rc, 1, "%s", err);
            snprintf(out + n, outlen - n, "%.*s|", (int)len, line);
        }
    }
}

TestSuite(reader, .init = setup, .fini = teardown, .timeout = 30);

Test(reader, directory_in_name_order_crlf_and_missing_newline) {
    write_file("b.log", "b1\r\nb2\n");
    write_file("a.log", "a1\na2");
    write_file(".hidden", "x\n");
    const char *in[] = {dir};
    ps_reader_options o = {.inputs = in, .ninputs = 1};
    ps_reader *r;
    char err[256], out[512];
    cr_assert_eq(ps_reader_new(&o, &r, err, sizeof(err)), 0, "%s", err);
    read_all(r, out, sizeof(out));
    cr_assert_str_eq(out, "a1|a2|b1|b2|");
    ps_reader_free(r);
}

Test(reader, glob_and_files_and_missing_input) {
    write_file("x1.tsv", "1\n2\n");
    write_file("x2.tsv", "3\n");
    write_file("y.tsv", "9\n");
    char glob[128], y[128];
    snprintf(glob, sizeof(glob), "%s/x*.tsv", dir);
    snprintf(y, sizeof(y), "%s/y.tsv", dir);
    const char *in[] = {y, glob};
    ps_reader_options o = {.inputs = in, .ninputs = 2};
    ps_reader *r;
    char err[256], out[512];
    cr_assert_eq(ps_reader_new(&o, &r, err, sizeof(err)), 0, "%s", err);
    read_all(r, out, sizeof(out));
    cr_assert_str_eq(out, "9|1|2|3|");
    ps_reader_free(r);
    const char *bad[] = {"/nonexistent/file"};
    o.inputs = bad;
    o.ninputs = 1;
    cr_assert_lt(ps_reader_new(&o, &r, err, sizeof(err)), 0);
    cr_assert(strstr(err, "/nonexistent/file"), "%s", err);
}

Test(reader, workers_take_disjoint_shares) {
    write_file("f", "0\n1\n2\n3\n4\n5\n6\n");
    char path[128];
    snprintf(path, sizeof(path), "%s/f", dir);
    const char *in[] = {path};
    const char *want[] = {"0|3|6|", "1|4|", "2|5|"};
    for (uint32_t w = 0; w < 3; w++) {
        ps_reader_options o = {.inputs = in, .ninputs = 1, .worker_index = w, .num_workers = 3};
        ps_reader *r;
        char err[256], out[512];
        cr_assert_eq(ps_reader_new(&o, &r, err, sizeof(err)), 0);
        read_all(r, out, sizeof(out));
        cr_assert_str_eq(out, want[w]);
        ps_reader_free(r);
    }
}

Test(reader, overlong_lines_are_reported_and_skipped) {
    char big[5000];
    memset(big, 'x', sizeof(big) - 2);
    big[sizeof(big) - 2] = '\n';
    big[sizeof(big) - 1] = '\0';
    write_file("f", "short\n");
    append_file("f", big);
    append_file("f", "after\n");
    char path[128];
    snprintf(path, sizeof(path), "%s/f", dir);
    const char *in[] = {path};
    ps_reader_options o = {.inputs = in, .ninputs = 1, .max_line = 100};
    ps_reader *r;
    char err[256], out[512];
    cr_assert_eq(ps_reader_new(&o, &r, err, sizeof(err)), 0);
    read_all(r, out, sizeof(out));
    cr_assert_str_eq(out, "short|<long@2>|after|");
    ps_reader_free(r);
}

Test(reader, position_and_seek_resume_exactly) {
    write_file("a", "1\n2\n3\n");
    write_file("b", "4\n5\n");
    char a[128], b[128];
    snprintf(a, sizeof(a), "%s/a", dir);
    snprintf(b, sizeof(b), "%s/b", dir);
    const char *in[] = {a, b};
    ps_reader_options o = {.inputs = in, .ninputs = 2};
    ps_reader *r;
    char err[256], out[512];
    cr_assert_eq(ps_reader_new(&o, &r, err, sizeof(err)), 0);
    const char *line, *file;
    size_t len;
    uint64_t lineno;
    for (int i = 0; i < 4; i++)
        cr_assert_eq(ps_reader_next(r, &line, &len, &file, &lineno, err, sizeof(err)), 1);
    ps_reader_pos pos;
    ps_reader_position(r, &pos);
    cr_assert_eq(pos.lines, 4);
    ps_reader_free(r);
    cr_assert_eq(ps_reader_new(&o, &r, err, sizeof(err)), 0);
    cr_assert_eq(ps_reader_seek(r, &pos, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(ps_reader_next(r, &line, &len, &file, &lineno, err, sizeof(err)), 1);
    cr_assert_eq(lineno, 2);
    cr_assert_eq(len, 1);
    cr_assert_eq(line[0], '5');
    cr_assert_eq(ps_reader_next(r, &line, &len, &file, &lineno, err, sizeof(err)), 0);
    cr_assert_eq(ps_reader_rewind(r), 0);
    read_all(r, out, sizeof(out));
    cr_assert_str_eq(out, "1|2|3|4|5|");
    ps_reader_free(r);
}

static volatile sig_atomic_t stop_flag;

static void *appender(void *arg) {
    (void)arg;
    usleep(100000);
    append_file("live.log", "two\nthr");   /* half a line: must wait */
    usleep(100000);
    append_file("live.log", "ee\n");
    usleep(100000);
    write_file("next.log", "four\n");      /* a new file in the followed directory */
    usleep(200000);
    append_file("next.log", "half");       /* never completed before stop */
    usleep(100000);
    stop_flag = 1;
    return NULL;
}

Test(reader, follow_mode_waits_for_whole_lines_and_new_files) {
    write_file("live.log", "one\n");
    const char *in[] = {dir};
    stop_flag = 0;
    ps_reader_options o = {.inputs = in, .ninputs = 1, .follow = true, .poll_ms = 10, .stop = &stop_flag};
    ps_reader *r;
    char err[256], out[512];
    cr_assert_eq(ps_reader_new(&o, &r, err, sizeof(err)), 0, "%s", err);
    pthread_t t;
    pthread_create(&t, NULL, appender, NULL);
    read_all(r, out, sizeof(out));
    pthread_join(t, NULL);
    cr_assert_str_eq(out, "one|two|three|four|");
    ps_reader_free(r);
}

Test(reader, headers_go_to_every_worker_and_count_in_no_share) {
    write_file("a.csv", "h1,h2\n1,x\n2,y\n");
    write_file("b.csv", "h1,h2\n3,z\n");
    const char *in[] = {dir};
    const char *want[] = {"H:h1,h2|1,x|H:h1,h2|3,z|", "H:h1,h2|2,y|H:h1,h2|"};
    for (uint32_t w = 0; w < 2; w++) {
        ps_reader_options o = {.inputs = in, .ninputs = 1, .worker_index = w, .num_workers = 2,
                               .headers = true};
        ps_reader *r;
        char err[256], out[512] = "";
        cr_assert_eq(ps_reader_new(&o, &r, err, sizeof(err)), 0);
        const char *line, *file;
        size_t len;
        uint64_t lineno;
        int rc;
        while ((rc = ps_reader_next(r, &line, &len, &file, &lineno, err, sizeof(err))) > 0) {
            size_t n = strlen(out);
            snprintf(out + n, sizeof(out) - n, "%s%.*s|", rc == 2 ? "H:" : "", (int)len, line);
        }
        cr_assert_str_eq(out, want[w]);
        ps_reader_free(r);
    }
}
