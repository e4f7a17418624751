/* Cluster maps: the even split agrees with ps_bucket_owner, the encoding
 * round-trips, and a damaged or inconsistent encoding is refused. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "cmap.h"
#include "error.h"

static char *addrs[] = {"127.0.0.1:7001", "127.0.0.1:7002", "10.0.0.3:7003"};

Test(cmap, even_split_matches_bucket_owner) {
    ps_cluster_map m;
    cr_assert_eq(ps_cluster_map_even(7, 1024, addrs, 3, &m), 0);
    cr_assert_eq(m.version, 7);
    cr_assert_eq(m.nshards, 3);
    for (uint32_t b = 0; b < 1024; b++)
        cr_assert_eq(m.owner[b], ps_bucket_owner(b, 1024, 3), "bucket %u", b);
    for (uint64_t k = 1; k < 5000; k++) {
        uint64_t fid = ps_mix64(k);
        cr_assert_eq(ps_cluster_map_key_owner(&m, fid), ps_key_owner(fid, 1024, 3));
    }
    char err[160];
    cr_assert_eq(ps_cluster_map_check(&m, err, sizeof(err)), 0, "%s", err);
    ps_cluster_map_deinit(&m);
}

Test(cmap, encoding_round_trips) {
    ps_cluster_map m, back, copy;
    cr_assert_eq(ps_cluster_map_even(42, 64, addrs, 3, &m), 0);
    m.owner[5] = 2; /* not an even split any more */
    char *buf;
    size_t len;
    cr_assert_eq(ps_cluster_map_encode(&m, &buf, &len), 0);
    cr_assert_eq(ps_cluster_map_decode(buf, len, &back), 0);
    cr_assert_eq(back.version, 42);
    cr_assert(ps_cluster_map_same_layout(&m, &back));
    cr_assert_eq(ps_cluster_map_copy(&back, &copy), 0);
    cr_assert(ps_cluster_map_same_layout(&copy, &m));
    copy.owner[6] = 2;
    cr_assert_not(ps_cluster_map_same_layout(&copy, &m));
    /* Every truncation is refused, never read past. */
    for (size_t cut = 0; cut < len; cut++) {
        ps_cluster_map x;
        cr_assert_eq(ps_cluster_map_decode(buf, cut, &x), PS_EPROTO, "cut at %zu", cut);
    }
    free(buf);
    ps_cluster_map_deinit(&m);
    ps_cluster_map_deinit(&back);
    ps_cluster_map_deinit(&copy);
}

Test(cmap, owner_outside_the_shard_list_is_refused) {
    ps_cluster_map m;
    cr_assert_eq(ps_cluster_map_even(1, 16, addrs, 2, &m), 0);
    m.owner[3] = 2;
    char err[160];
    cr_assert_eq(ps_cluster_map_check(&m, err, sizeof(err)), PS_EPROTO);
    cr_assert(strstr(err, "bucket 3"), "%s", err);
    char *buf;
    size_t len;
    cr_assert_eq(ps_cluster_map_encode(&m, &buf, &len), 0);
    ps_cluster_map x;
    cr_assert_eq(ps_cluster_map_decode(buf, len, &x), PS_EPROTO);
    free(buf);
    ps_cluster_map_deinit(&m);
}
