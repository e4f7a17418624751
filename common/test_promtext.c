/* Tests for the Prometheus text writer (common/promtext.h): the exact text
 * of families, labels and histograms (promtool itself checks whole pages in
 * tests/metrics). */

#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "promtext.h"

static char *page(ps_buf *b) {
    cr_assert_eq(ps_buf_reserve(b, 1), 0);
    b->data[b->len] = 0;
    return b->data;
}

Test(promtext, family_once_then_samples_with_constant_labels) {
    ps_buf b;
    ps_buf_init(&b);
    ps_prom p;
    ps_prom_init(&p, &b, "shard=\"3\"");
    char l[64];
    ps_prom_family(&p, "x_total", PS_PROM_COUNTER, "things");
    cr_assert_eq(ps_prom_labels(l, sizeof(l), "table", "a", NULL), 0);
    ps_prom_u64(&p, l, 5);
    ps_prom_family(&p, "x_total", PS_PROM_COUNTER, "things"); /* again: not repeated */
    ps_prom_labels(l, sizeof(l), "table", "b", NULL);
    ps_prom_u64(&p, l, 18446744073709551615ull);
    ps_prom_scalar(&p, "y_bytes", PS_PROM_GAUGE, "size", 1.5);
    cr_assert_eq(ps_prom_finish(&p), 0);
    cr_assert_str_eq(page(&b), "# HELP x_total things\n# TYPE x_total counter\n"
                               "x_total{shard=\"3\",table=\"a\"} 5\n"
                               "x_total{shard=\"3\",table=\"b\"} 18446744073709551615\n"
                               "# HELP y_bytes size\n# TYPE y_bytes gauge\n"
                               "y_bytes{shard=\"3\"} 1.5\n");
    ps_buf_deinit(&b);
}

Test(promtext, no_labels_no_braces_and_nan) {
    ps_buf b;
    ps_buf_init(&b);
    ps_prom p;
    ps_prom_init(&p, &b, "");
    ps_prom_scalar(&p, "auc", PS_PROM_GAUGE, "h", NAN);
    ps_prom_scalar(&p, "inf", PS_PROM_GAUGE, "h", -INFINITY);
    cr_assert_str_eq(page(&b), "# HELP auc h\n# TYPE auc gauge\nauc NaN\n"
                               "# HELP inf h\n# TYPE inf gauge\ninf -Inf\n");
    ps_buf_deinit(&b);
}

Test(promtext, label_values_are_escaped) {
    char l[64];
    cr_assert_eq(ps_prom_labels(l, sizeof(l), "a", "x\"y\\z\nw", "b", "", NULL), 0);
    cr_assert_str_eq(l, "a=\"x\\\"y\\\\z\\nw\",b=\"\"");
    char small[8];
    cr_assert_eq(ps_prom_labels(small, sizeof(small), "table", "long", NULL), -ENAMETOOLONG);
}

Test(promtext, histogram_buckets_are_cumulative_and_agree_with_count) {
    ps_prom_histogram h;
    memset(&h, 0, sizeof(h));
    ps_prom_histogram_observe(&h, 50000);        /* 50 us: first bucket (0.0001) */
    ps_prom_histogram_observe(&h, 100000);       /* exactly 0.0001: still the first (le) */
    ps_prom_histogram_observe(&h, 3000000);      /* 3 ms: le 0.005 */
    ps_prom_histogram_observe(&h, 60000000000u); /* 60 s: +Inf only */
    ps_buf b;
    ps_buf_init(&b);
    ps_prom p;
    ps_prom_init(&p, &b, "");
    ps_prom_family(&p, "d_seconds", PS_PROM_HISTOGRAM, "h");
    ps_prom_histogram_write(&p, "method=\"pull\"", &h);
    cr_assert_eq(ps_prom_finish(&p), 0);
    const char *t = page(&b);
    cr_assert(strstr(t, "d_seconds_bucket{method=\"pull\",le=\"0.0001\"} 2\n"), "%s", t);
    cr_assert(strstr(t, "d_seconds_bucket{method=\"pull\",le=\"0.0025\"} 2\n"), "%s", t);
    cr_assert(strstr(t, "d_seconds_bucket{method=\"pull\",le=\"0.005\"} 3\n"), "%s", t);
    cr_assert(strstr(t, "d_seconds_bucket{method=\"pull\",le=\"10\"} 3\n"), "%s", t);
    cr_assert(strstr(t, "d_seconds_bucket{method=\"pull\",le=\"+Inf\"} 4\n"), "%s", t);
    cr_assert(strstr(t, "d_seconds_count{method=\"pull\"} 4\n"), "%s", t);
    const char *sum = strstr(t, "d_seconds_sum{method=\"pull\"} ");
    double v = 0;
    cr_assert(sum && sscanf(strchr(sum, ' ') + 1, "%lf", &v) == 1, "%s", t);
    cr_assert_float_eq(v, 60.00315, 1e-9);
    ps_buf_deinit(&b);
}
