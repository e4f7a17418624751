#include "cmap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* Encoding, big-endian: format byte (1), epoch (8), buckets (4), shards (4),
 * per shard its address length (2) and bytes, then one owner (2) per
 * bucket. Bucket numbers fit in 16 bits (the store key holds 2 bytes), and
 * so do shard ids. */
#define CMAP_FORMAT 1
#define CMAP_ADDR_MAX 255

static int alloc_map(uint64_t version, uint32_t buckets, size_t nshards, ps_cluster_map *m) {
    memset(m, 0, sizeof(*m));
    m->version = version;
    m->buckets = buckets;
    m->shards = calloc(nshards + 1, sizeof(char *));
    m->owner = calloc((size_t)buckets + 1, sizeof(uint32_t));
    if (!m->shards || !m->owner) {
        ps_cluster_map_deinit(m);
        return -ENOMEM;
    }
    m->nshards = nshards;
    return 0;
}

int ps_cluster_map_even(uint64_t version, uint32_t buckets, char *const *shards, size_t nshards,
                        ps_cluster_map *ret_map) {
    ps_cluster_map m;
    if (!buckets || !nshards)
        return -EINVAL;
    int r = alloc_map(version, buckets, nshards, &m);
    if (r < 0)
        return r;
    for (size_t i = 0; i < nshards; i++) {
        m.shards[i] = strdup(shards[i]);
        if (!m.shards[i]) {
            ps_cluster_map_deinit(&m);
            return -ENOMEM;
        }
    }
    for (uint32_t b = 0; b < buckets; b++)
        m.owner[b] = ps_bucket_owner(b, buckets, (uint32_t)nshards);
    *ret_map = m;
    return 0;
}

int ps_cluster_map_from_config(const ps_config *cfg, ps_cluster_map *ret_map) {
    return ps_cluster_map_even(cfg->map_version, cfg->buckets, cfg->shards, cfg->nshards, ret_map);
}

int ps_cluster_map_copy(const ps_cluster_map *src, ps_cluster_map *ret_map) {
    ps_cluster_map m;
    int r = alloc_map(src->version, src->buckets, src->nshards, &m);
    if (r < 0)
        return r;
    for (size_t i = 0; i < src->nshards; i++) {
        m.shards[i] = strdup(src->shards[i]);
        if (!m.shards[i]) {
            ps_cluster_map_deinit(&m);
            return -ENOMEM;
        }
    }
    memcpy(m.owner, src->owner, src->buckets * sizeof(uint32_t));
    *ret_map = m;
    return 0;
}

void ps_cluster_map_deinit(ps_cluster_map *m) {
    if (!m)
        return;
    for (size_t i = 0; m->shards && i < m->nshards; i++)
        free(m->shards[i]);
    free(m->shards);
    free(m->owner);
    memset(m, 0, sizeof(*m));
}

int ps_cluster_map_check(const ps_cluster_map *m, char *err, size_t errlen) {
    if (!m->buckets || m->buckets > 65536 || !m->nshards || m->nshards > 65536) {
        snprintf(err, errlen, "a cluster map needs 1..65536 buckets and shards (has %u and %zu)",
                 m->buckets, m->nshards);
        return PS_EPROTO;
    }
    for (size_t i = 0; i < m->nshards; i++)
        if (!m->shards[i] || !m->shards[i][0] || strlen(m->shards[i]) > CMAP_ADDR_MAX) {
            snprintf(err, errlen, "shard %zu of the cluster map has no usable address", i);
            return PS_EPROTO;
        }
    for (uint32_t b = 0; b < m->buckets; b++)
        if (m->owner[b] >= m->nshards) {
            snprintf(err, errlen, "bucket %u is owned by shard %u, but the map lists %zu shards", b,
                     m->owner[b], m->nshards);
            return PS_EPROTO;
        }
    return 0;
}

bool ps_cluster_map_same_layout(const ps_cluster_map *a, const ps_cluster_map *b) {
    if (a->buckets != b->buckets || a->nshards != b->nshards)
        return false;
    for (size_t i = 0; i < a->nshards; i++)
        if (strcmp(a->shards[i], b->shards[i]))
            return false;
    return memcmp(a->owner, b->owner, a->buckets * sizeof(uint32_t)) == 0;
}

static uint8_t *put_be(uint8_t *p, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint64_t get_be(const uint8_t *p, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | p[i];
    return v;
}

int ps_cluster_map_encode(const ps_cluster_map *m, char **ret_buf, size_t *ret_len) {
    size_t len = 1 + 8 + 4 + 4 + 2 * (size_t)m->buckets;
    for (size_t i = 0; i < m->nshards; i++)
        len += 2 + strlen(m->shards[i]);
    uint8_t *buf = malloc(len), *p = buf;
    if (!buf)
        return -ENOMEM;
    *p++ = CMAP_FORMAT;
    p = put_be(p, m->version, 8);
    p = put_be(p, m->buckets, 4);
    p = put_be(p, m->nshards, 4);
    for (size_t i = 0; i < m->nshards; i++) {
        size_t n = strlen(m->shards[i]);
        p = put_be(p, n, 2);
        memcpy(p, m->shards[i], n);
        p += n;
    }
    for (uint32_t b = 0; b < m->buckets; b++)
        p = put_be(p, m->owner[b], 2);
    *ret_buf = (char *)buf;
    *ret_len = len;
    return 0;
}

int ps_cluster_map_decode(const void *data, size_t len, ps_cluster_map *ret_map) {
    const uint8_t *p = data, *end = p + len;
    if (len < 17 || p[0] != CMAP_FORMAT)
        return PS_EPROTO;
    uint64_t version = get_be(p + 1, 8);
    uint32_t buckets = (uint32_t)get_be(p + 9, 4);
    uint32_t nshards = (uint32_t)get_be(p + 13, 4);
    p += 17;
    if (!buckets || buckets > 65536 || !nshards || nshards > 65536)
        return PS_EPROTO;
    ps_cluster_map m;
    int r = alloc_map(version, buckets, nshards, &m);
    if (r < 0)
        return r;
    for (uint32_t i = 0; i < nshards; i++) {
        size_t n = end - p >= 2 ? (size_t)get_be(p, 2) : SIZE_MAX;
        if (n == SIZE_MAX || (size_t)(end - p - 2) < n) {
            ps_cluster_map_deinit(&m);
            return PS_EPROTO;
        }
        m.shards[i] = strndup((const char *)p + 2, n);
        if (!m.shards[i]) {
            ps_cluster_map_deinit(&m);
            return -ENOMEM;
        }
        p += 2 + n;
    }
    if ((size_t)(end - p) != 2 * (size_t)buckets) {
        ps_cluster_map_deinit(&m);
        return PS_EPROTO;
    }
    for (uint32_t b = 0; b < buckets; b++, p += 2)
        m.owner[b] = (uint32_t)get_be(p, 2);
    char err[160];
    if (ps_cluster_map_check(&m, err, sizeof(err)) < 0) {
        ps_cluster_map_deinit(&m);
        return PS_EPROTO;
    }
    *ret_map = m;
    return 0;
}
