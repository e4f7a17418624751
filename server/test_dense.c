/* Adam on dense blocks (server/dense.c): every element, whatever the
 * block's length (the vector path's four at a time and the tail), follows
 * the formula of ALGORITHMS.md bit for bit. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "dense.h"
#include "error.h"

static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof(u));
    return u;
}

/* The update written out as the spec gives it, one element at a time. */
static void adam_reference(const ps_dense_config *c, uint64_t step, float *w, float *m, float *v,
                           const float *g, size_t len) {
    double c1 = 1 - pow(c->beta1, (double)step), c2 = 1 - pow(c->beta2, (double)step);
    double lr_t = c->lr * sqrt(c2) / c1, eps_t = c->eps * sqrt(c2);
    float b1 = (float)c->beta1, b2 = (float)c->beta2;
    for (size_t i = 0; i < len; i++) {
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        w[i] -= (float)(lr_t * m[i] / (sqrt((double)v[i]) + eps_t));
    }
}

Test(dense, adam_matches_the_formula_bit_for_bit_at_every_length) {
    ps_dense_config c = {.lr = 0.003, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
    const size_t lens[] = {1, 2, 3, 4, 5, 7, 8, 9, 17, 429, 1000};
    uint64_t rng = 12345;
    for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
        size_t len = lens[li];
        ps_dense *d;
        cr_assert_eq(ps_dense_new(&c, &d), 0);
        float w[1000], m[1000] = {0}, v[1000] = {0}, g[1000];
        for (size_t i = 0; i < len; i++)
            w[i] = (float)((double)(i % 13) * 0.01 - 0.06);
        cr_assert_eq(ps_dense_create(d, "blk", w, len), 0);
        for (uint64_t step = 1; step <= 20; step++) {
            for (size_t i = 0; i < len; i++) {
                rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
                /* gradients from 1e-6 to 10 in magnitude, some exact zeros */
                double u = (double)(rng >> 11) / 9007199254740992.0;
                g[i] = (rng >> 7) % 11 == 0 ? 0.0f : (float)((u - 0.5) * pow(10.0, (double)((rng >> 3) % 8) - 6));
            }
            cr_assert_eq(ps_dense_check(d, "blk", g, len), 0);
            ps_dense_apply(d, "blk", g, len);
            adam_reference(&c, step, w, m, v, g, len);
            const float *got;
            size_t n;
            cr_assert_eq(ps_dense_get(d, "blk", &got, &n), 0);
            cr_assert_eq(n, len);
            for (size_t i = 0; i < len; i++)
                cr_assert_eq(f32_bits(got[i]), f32_bits(w[i]), "len %zu step %llu w[%zu]: %.9g vs %.9g",
                             len, (unsigned long long)step, i, got[i], w[i]);
        }
        ps_dense_free(d);
    }
}
