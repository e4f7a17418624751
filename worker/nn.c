/* Dense primitives; see nn.h for the conventions.
 *
 * Design note.
 * - Registry (ps_nn_params): an array of pointers to separately allocated
 *   block descriptors, so a descriptor, its name and its value/grad arrays
 *   never move once added; models keep raw pointers into it for their whole
 *   life. Blocks are only added (during model construction), never removed.
 * - MLP tower: new() registers the blocks and allocates every activation
 *   buffer for max_batch rows. forward(X, B) records B and the borrowed X and
 *   fills the buffers (state: has a batch); backward() needs that state and
 *   leaves it in place, so a second backward would add the same gradients
 *   again. A later forward replaces the batch.
 */
#include "nn.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "error.h"
#include "eval.h"
#include "text.h"

/* ---- Activations ------------------------------------------------------ */

const char *const ps_nn_act_names[PS_NN_ACT_COUNT] = {PS_NN_ACT_MAP(PS_ENUM_STR)};
PS_ENUM_FUNCTIONS(ps_nn_act, ps_nn_act, PS_NN_ACT_COUNT)

/* v if keep else +0, without a branch. At -O2 GCC turns "v > 0 ? v : 0"
 * into a compare and jump, and with signs at random that mispredicts half
 * the time: 2.3 ms of a 30 ms DCN batch went to ReLU over the 400-400
 * tower (perf, single thread). Masking the bits keeps it at ~1 cycle per
 * element and the result identical (NaN -> 0, -0 -> +0). */
static inline float keep_if(float v, bool keep) {
    uint32_t b;
    memcpy(&b, &v, sizeof(b));
    b &= -(uint32_t)keep;
    memcpy(&v, &b, sizeof(v));
    return v;
}

void ps_nn_act_forward(ps_nn_act a, float *x, size_t n) {
    switch (a) {
    case PS_NN_ACT_RELU:
        for (size_t i = 0; i < n; i++)
            x[i] = keep_if(x[i], x[i] > 0.0f);
        break;
    case PS_NN_ACT_TANH:
        for (size_t i = 0; i < n; i++)
            x[i] = tanhf(x[i]);
        break;
    default:
        break;
    }
}

/* dout[i] = din[i] * g'(from output y[i]); din == dout is allowed. */
static void act_grad(ps_nn_act a, const float *y, const float *din,
                     float *dout, size_t n) {
    switch (a) {
    case PS_NN_ACT_RELU:
        for (size_t i = 0; i < n; i++)
            dout[i] = keep_if(din[i], y[i] > 0.0f);
        break;
    case PS_NN_ACT_TANH:
        for (size_t i = 0; i < n; i++)
            dout[i] = din[i] * (1.0f - y[i] * y[i]);
        break;
    default:
        if (dout != din)
            memcpy(dout, din, n * sizeof(*dout));
        break;
    }
}

void ps_nn_act_backward(ps_nn_act a, const float *y, float *dy, size_t n) {
    act_grad(a, y, dy, dy, n);
}

/* ---- RNG and initialisation ------------------------------------------ */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void ps_nn_rng_init(ps_nn_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

uint64_t ps_nn_rng_next(ps_nn_rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double ps_nn_rng_uniform(ps_nn_rng *r) {
    return (double)(ps_nn_rng_next(r) >> 11) * 0x1.0p-53;
}

double ps_nn_rng_normal(ps_nn_rng *r) {
    double u1 = 1.0 - ps_nn_rng_uniform(r); /* (0, 1]: log stays finite */
    double u2 = ps_nn_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void ps_nn_init_fill(const ps_nn_init *init, float *x, size_t n,
                     ps_nn_rng *rng) {
    double fans = (double)(init->fan_in + init->fan_out);
    switch (init->kind) {
    case PS_NN_INIT_GLOROT_UNIFORM: {
        double lim = fans > 0 ? sqrt(6.0 / fans) : 0.0;
        for (size_t i = 0; i < n; i++)
            x[i] = (float)((2.0 * ps_nn_rng_uniform(rng) - 1.0) * lim);
        break;
    }
    case PS_NN_INIT_GLOROT_NORMAL: {
        double sd = fans > 0 ? sqrt(2.0 / fans) : 0.0;
        for (size_t i = 0; i < n; i++)
            x[i] = (float)(ps_nn_rng_normal(rng) * sd);
        break;
    }
    case PS_NN_INIT_UNIFORM:
        for (size_t i = 0; i < n; i++)
            x[i] = (float)((2.0 * ps_nn_rng_uniform(rng) - 1.0) * init->limit);
        break;
    default:
        memset(x, 0, n * sizeof(*x));
        break;
    }
}

/* ---- Parameter blocks ------------------------------------------------- */

typedef struct block {
    ps_nn_param pub;
    char name[PS_NN_MAX_NAME];
} block;

struct ps_nn_params {
    block **v;
    size_t n, cap;
};

/* 64-byte aligned, zeroed, size rounded up to the alignment as
 * aligned_alloc requires. */
static float *alloc_floats(size_t n) {
    size_t bytes = (n * sizeof(float) + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes ? bytes : 64);
    if (p)
        memset(p, 0, bytes ? bytes : 64);
    return p;
}

int ps_nn_params_new(ps_nn_params **ret_params) {
    ps_nn_params *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    *ret_params = p;
    return 0;
}

static void block_free(block *b) {
    if (!b)
        return;
    free(b->pub.value);
    free(b->pub.grad);
    free(b);
}

void ps_nn_params_free(ps_nn_params *p) {
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        block_free(p->v[i]);
    free(p->v);
    free(p);
}

int ps_nn_params_add(ps_nn_params *p, const char *name, size_t ndim,
                     const size_t *shape, const ps_nn_init *init,
                     const ps_nn_param **ret_param) {
    if (ndim == 0 || ndim > PS_NN_MAX_NDIM || strlen(name) >= PS_NN_MAX_NAME ||
        ps_nn_params_find(p, name))
        return PS_ECONFIG;
    size_t len = 1;
    for (size_t i = 0; i < ndim; i++) {
        if (shape[i] == 0)
            return PS_ECONFIG;
        len *= shape[i];
    }
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 16;
        block **v = realloc(p->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        p->v = v;
        p->cap = cap;
    }
    block *b = calloc(1, sizeof(*b));
    if (!b)
        return -ENOMEM;
    b->pub.value = alloc_floats(len);
    b->pub.grad = alloc_floats(len);
    if (!b->pub.value || !b->pub.grad) {
        block_free(b);
        return -ENOMEM;
    }
    strcpy(b->name, name);
    b->pub.name = b->name;
    b->pub.len = len;
    b->pub.ndim = ndim;
    memcpy(b->pub.shape, shape, ndim * sizeof(*shape));
    if (init)
        b->pub.init = *init;
    else
        b->pub.init.kind = PS_NN_INIT_ZERO;
    p->v[p->n++] = b;
    if (ret_param)
        *ret_param = &b->pub;
    return 0;
}

size_t ps_nn_params_count(const ps_nn_params *p) { return p->n; }

const ps_nn_param *ps_nn_params_at(const ps_nn_params *p, size_t i) {
    return i < p->n ? &p->v[i]->pub : NULL;
}

const ps_nn_param *ps_nn_params_find(const ps_nn_params *p, const char *name) {
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->v[i]->name, name) == 0)
            return &p->v[i]->pub;
    return NULL;
}

size_t ps_nn_params_total(const ps_nn_params *p) {
    size_t t = 0;
    for (size_t i = 0; i < p->n; i++)
        t += p->v[i]->pub.len;
    return t;
}

void ps_nn_params_zero_grad(ps_nn_params *p) {
    for (size_t i = 0; i < p->n; i++)
        memset(p->v[i]->pub.grad, 0, p->v[i]->pub.len * sizeof(float));
}

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    return h;
}

void ps_nn_params_init_values(ps_nn_params *p, uint64_t seed) {
    for (size_t i = 0; i < p->n; i++) {
        ps_nn_param *b = &p->v[i]->pub;
        uint64_t s = seed;
        ps_nn_rng rng;
        ps_nn_rng_init(&rng, splitmix64(&s) ^ fnv1a64(b->name));
        ps_nn_init_fill(&b->init, b->value, b->len, &rng);
    }
}

/* ---- Linear layer ------------------------------------------------------ */

void ps_nn_linear_forward(const float *W, const float *b, size_t in,
                          size_t out, const float *X, size_t B, float *Y) {
    if (b)
        for (size_t r = 0; r < B; r++)
            memcpy(Y + r * out, b, out * sizeof(*Y));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)B, (int)out,
                (int)in, 1.0f, X, (int)in, W, (int)in, b ? 1.0f : 0.0f, Y,
                (int)out);
}

void ps_nn_colsum_add(const float *dY, size_t B, size_t n, float *db) {
    for (size_t r = 0; r < B; r++) {
        const float *row = dY + r * n;
        for (size_t j = 0; j < n; j++)
            db[j] += row[j];
    }
}

void ps_nn_linear_backward(const float *W, size_t in, size_t out,
                           const float *X, const float *dY, size_t B,
                           float *dW, float *db, float *dX,
                           bool accumulate_dx) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)out, (int)in,
                (int)B, 1.0f, dY, (int)out, X, (int)in, 1.0f, dW, (int)in);
    if (db)
        ps_nn_colsum_add(dY, B, out, db);
    if (dX)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)B,
                    (int)in, (int)out, 1.0f, dY, (int)out, W, (int)in,
                    accumulate_dx ? 1.0f : 0.0f, dX, (int)in);
}

/* ---- MLP tower ---------------------------------------------------------- */

struct ps_nn_mlp {
    size_t in_dim, n, max_batch;
    ps_nn_act act;
    bool act_last;
    size_t *sizes;              /* n */
    const ps_nn_param **W, **b; /* n each, borrowed from the registry */
    float **h;                  /* n outputs, max_batch x sizes[j] */
    float *g[2];                /* gradient ping-pong, max_batch x max width */
    const float *X;             /* borrowed from the last forward */
    size_t batch;               /* 0: no forward yet */
};

void ps_nn_mlp_free(ps_nn_mlp *m) {
    if (!m)
        return;
    if (m->h)
        for (size_t j = 0; j < m->n; j++)
            free(m->h[j]);
    free(m->h);
    free(m->g[0]);
    free(m->g[1]);
    free(m->W);
    free(m->b);
    free(m->sizes);
    free(m);
}

int ps_nn_mlp_new(ps_nn_params *params, const ps_nn_mlp_config *cfg,
                  ps_nn_mlp **ret_mlp) {
    if (cfg->in_dim == 0 || cfg->max_batch == 0 ||
        (unsigned)cfg->act >= PS_NN_ACT_COUNT ||
        (cfg->n_layers && !cfg->sizes))
        return PS_ECONFIG;
    for (size_t j = 0; j < cfg->n_layers; j++)
        if (cfg->sizes[j] == 0)
            return PS_ECONFIG;
    const char *prefix = cfg->prefix ? cfg->prefix : "mlp";
    int r = -ENOMEM;
    ps_nn_mlp *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->in_dim = cfg->in_dim;
    m->n = cfg->n_layers;
    m->max_batch = cfg->max_batch;
    m->act = cfg->act;
    m->act_last = cfg->act_last;
    size_t n = m->n ? m->n : 1;
    m->sizes = calloc(n, sizeof(*m->sizes));
    m->W = calloc(n, sizeof(*m->W));
    m->b = calloc(n, sizeof(*m->b));
    m->h = calloc(n, sizeof(*m->h));
    if (!m->sizes || !m->W || !m->b || !m->h)
        goto fail;
    size_t prev = m->in_dim, widest = m->in_dim;
    for (size_t j = 0; j < m->n; j++) {
        size_t out = cfg->sizes[j];
        m->sizes[j] = out;
        widest = out > widest ? out : widest;
        char name[PS_NN_MAX_NAME];
        size_t wshape[2] = {out, prev};
        ps_nn_init wi = {.kind = PS_NN_INIT_GLOROT_UNIFORM, .fan_in = prev,
                         .fan_out = out};
        if (snprintf(name, sizeof(name), "%s.%zu.W", prefix, j) >=
            (int)sizeof(name)) {
            r = PS_ECONFIG;
            goto fail;
        }
        r = ps_nn_params_add(params, name, 2, wshape, &wi, &m->W[j]);
        if (r < 0)
            goto fail;
        snprintf(name, sizeof(name), "%s.%zu.b", prefix, j);
        r = ps_nn_params_add(params, name, 1, &out, NULL, &m->b[j]);
        if (r < 0)
            goto fail;
        r = -ENOMEM;
        m->h[j] = alloc_floats(m->max_batch * out);
        if (!m->h[j])
            goto fail;
        prev = out;
    }
    m->g[0] = alloc_floats(m->max_batch * widest);
    m->g[1] = alloc_floats(m->max_batch * widest);
    if (!m->g[0] || !m->g[1])
        goto fail;
    *ret_mlp = m;
    return 0;
fail:
    ps_nn_mlp_free(m);
    return r;
}

size_t ps_nn_mlp_out_dim(const ps_nn_mlp *m) {
    return m->n ? m->sizes[m->n - 1] : m->in_dim;
}

static bool mlp_layer_has_act(const ps_nn_mlp *m, size_t j) {
    return m->act != PS_NN_ACT_IDENTITY && (j + 1 < m->n || m->act_last);
}

int ps_nn_mlp_forward(ps_nn_mlp *m, const float *X, size_t B,
                      const float **ret_Y) {
    if (B == 0)
        return -EINVAL;
    if (B > m->max_batch)
        return PS_ELIMIT;
    const float *in = X;
    size_t in_dim = m->in_dim;
    for (size_t j = 0; j < m->n; j++) {
        ps_nn_linear_forward(m->W[j]->value, m->b[j]->value, in_dim,
                             m->sizes[j], in, B, m->h[j]);
        if (mlp_layer_has_act(m, j))
            ps_nn_act_forward(m->act, m->h[j], B * m->sizes[j]);
        in = m->h[j];
        in_dim = m->sizes[j];
    }
    m->X = X;
    m->batch = B;
    *ret_Y = in;
    return 0;
}

int ps_nn_mlp_backward(ps_nn_mlp *m, const float *dY, float *ret_dX,
                       bool accumulate) {
    size_t B = m->batch;
    if (B == 0)
        return -EINVAL;
    if (m->n == 0) {
        if (ret_dX) {
            size_t len = B * m->in_dim;
            if (accumulate)
                for (size_t i = 0; i < len; i++)
                    ret_dX[i] += dY[i];
            else
                memcpy(ret_dX, dY, len * sizeof(*ret_dX));
        }
        return 0;
    }
    /* dout is dL/d(output of layer j). Layer j writes its pre-activation
     * gradient into g[j & 1] and its input gradient into g[(j + 1) & 1], so
     * the two never alias; the next layer down then rewrites that input
     * gradient in place. */
    const float *dout = dY;
    for (size_t j = m->n; j-- > 0;) {
        size_t out = m->sizes[j];
        const float *dpre = dout;
        if (mlp_layer_has_act(m, j)) {
            act_grad(m->act, m->h[j], dout, m->g[j & 1], B * out);
            dpre = m->g[j & 1];
        }
        const float *in = j ? m->h[j - 1] : m->X;
        size_t in_dim = j ? m->sizes[j - 1] : m->in_dim;
        float *dx = j ? m->g[(j + 1) & 1] : ret_dX;
        ps_nn_linear_backward(m->W[j]->value, in_dim, out, in, dpre, B,
                              m->W[j]->grad, m->b[j]->grad, dx,
                              j ? false : accumulate);
        dout = dx;
    }
    return 0;
}

/* ---- BLAS ---------------------------------------------------------------- */

const char *ps_nn_blas_core(void) {
    const char *name = openblas_get_corename();
    return name ? name : "unknown";
}

void openblas_set_num_threads(int num_threads);

void ps_nn_blas_one_thread(void) { openblas_set_num_threads(1); }

/* ---- Loss --------------------------------------------------------------- */

int ps_nn_logloss(const float *logits, const float *labels, size_t n,
                  double *ret_loss, float *ret_dlogits) {
    if (n == 0)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(logits[i]))
            return PS_ENONFINITE;
    double sum = 0.0, inv = 1.0 / (double)n;
    for (size_t i = 0; i < n; i++) {
        double z = logits[i], y = labels[i];
        sum += ps_logloss_logit(z, y);
        if (ret_dlogits)
            ret_dlogits[i] = (float)((ps_sigmoid(z) - y) * inv);
    }
    if (ret_loss)
        *ret_loss = sum * inv;
    return 0;
}
