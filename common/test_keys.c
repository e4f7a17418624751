/* Tests for feature ids, buckets and routing (common/keys.h; DESIGN.md
 * "Keys, buckets and routing").
 *
 * What a user depends on: every client computes the same fid for the same
 * (slot, value), so `ctrps-cli lookup --slot C3 --value 68fd1e64` finds the
 * row the worker trained, today and after an upgrade; the slot is readable
 * from the fid's top 16 bits; every bucket has exactly one owner and each
 * shard owns one contiguous run of buckets. */

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "keys.h"

Test(keys, fid_layout_slot_on_top_value_hash_below) {
    const char *values[] = {"", "a", "68fd1e64", "a much longer raw feature value, 40 bytes"};
    const uint16_t slots[] = {0, 1, 0x1234, 0xffff};
    for (size_t s = 0; s < sizeof(slots) / sizeof(slots[0]); s++) {
        for (size_t v = 0; v < sizeof(values) / sizeof(values[0]); v++) {
            size_t len = strlen(values[v]);
            uint64_t fid = ps_fid(slots[s], values[v], len);
            cr_assert_eq(fid >> 48, slots[s]);
            cr_assert_eq(ps_fid_slot(fid), slots[s]);
            cr_assert_eq(fid & PS_FID_VALUE_MASK, XXH3_64bits(values[v], len) & PS_FID_VALUE_MASK,
                         "low 48 bits are XXH3-64 of the raw value");
        }
    }
    cr_assert_eq(PS_FID_VALUE_MASK, UINT64_C(0x0000ffffffffffff));
}

Test(keys, slot_id_is_the_low_16_bits_of_xxh3_of_the_name) {
    const char *names[] = {"C1", "C3", "I1", "user_id", ""};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        cr_assert_eq(ps_slot_id(names[i]), (uint16_t)XXH3_64bits(names[i], strlen(names[i])),
                     "%s", names[i]);
}

Test(keys, fids_are_stable_across_builds) {
    /* Pinned values: a change here orphans every row users have trained
     * (DESIGN.md's example key). */
    cr_assert_eq(ps_slot_id("C3"), 20477);
    cr_assert_eq(ps_fid(ps_slot_id("C3"), "68fd1e64", 8), UINT64_C(0x4ffd431058060b4d));
    cr_assert_eq(ps_fid(ps_slot_id("I1"), "", 0), UINT64_C(0xf688800538d394c2));
}

Test(keys, the_value_length_is_respected) {
    /* Values are hashed by length, not up to a NUL: "ab" != "ab\0x". */
    const char v[] = "ab\0x";
    cr_assert_neq(ps_fid(1, v, 2), ps_fid(1, v, 4));
    cr_assert_eq(ps_fid(1, v, 2), ps_fid(1, "ab", 2));
}

Test(keys, bucket_is_in_range_and_spread) {
    const uint32_t nbs[] = {1, 2, 7, 1000, 1024, 65536};
    static uint32_t count[65536];
    for (size_t k = 0; k < sizeof(nbs) / sizeof(nbs[0]); k++) {
        uint32_t nb = nbs[k];
        memset(count, 0, sizeof(count));
        const uint32_t n = 200000;
        for (uint32_t i = 0; i < n; i++) {
            char v[16];
            int len = snprintf(v, sizeof(v), "%u", i);
            uint64_t fid = ps_fid((uint16_t)(i % 3), v, (size_t)len);
            uint32_t b = ps_bucket(fid, nb);
            cr_assert_lt(b, nb, "bucket %u of %u", b, nb);
            count[b]++;
        }
        if (nb <= 1024) {
            /* Every bucket gets a fair share (expected n/nb; a 2x skew
             * would unbalance the shards). Deterministic inputs. */
            double expect = (double)n / nb;
            for (uint32_t b = 0; b < nb; b++)
                cr_assert(count[b] > 0.7 * expect && count[b] < 1.3 * expect,
                          "nb=%u bucket %u has %u keys, expected about %.0f", nb, b, count[b],
                          expect);
        }
    }
    /* Extreme fids too. */
    cr_assert_lt(ps_bucket(0, 1024), 1024);
    cr_assert_lt(ps_bucket(UINT64_MAX, 1024), 1024);
}

Test(keys, sequential_fids_do_not_share_a_bucket_pattern) {
    /* Raw ids that differ only in high bits (one value, many slots) still
     * spread: the mix is what makes the bucket independent of the layout. */
    uint32_t seen[1024] = {0};
    for (uint32_t slot = 0; slot < 4096; slot++)
        seen[ps_bucket((uint64_t)slot << 48, 1024)]++;
    uint32_t used = 0;
    for (size_t b = 0; b < 1024; b++)
        used += seen[b] > 0;
    cr_assert_gt(used, 900, "4096 slot-only fids hit only %u of 1024 buckets", used);
}

Test(keys, owners_are_contiguous_and_cover_every_shard) {
    const uint32_t nbs[] = {1, 2, 3, 7, 64, 1000, 1024, 65536};
    for (size_t k = 0; k < sizeof(nbs) / sizeof(nbs[0]); k++) {
        uint32_t nb = nbs[k];
        for (uint32_t ns = 1; ns <= 33 && ns <= nb; ns++) {
            uint32_t prev = 0, run = 0, min_run = UINT32_MAX, max_run = 0;
            cr_assert_eq(ps_bucket_owner(0, nb, ns), 0, "nb=%u ns=%u", nb, ns);
            cr_assert_eq(ps_bucket_owner(nb - 1, nb, ns), ns - 1, "nb=%u ns=%u", nb, ns);
            for (uint32_t b = 0; b < nb; b++) {
                uint32_t o = ps_bucket_owner(b, nb, ns);
                cr_assert_lt(o, ns);
                /* Non-decreasing, stepping by one: each shard owns one
                 * non-empty contiguous range, in shard order. */
                cr_assert(o == prev || o == prev + 1, "nb=%u ns=%u: bucket %u owner %u after %u",
                          nb, ns, b, o, prev);
                if (o != prev) {
                    min_run = run < min_run ? run : min_run;
                    max_run = run > max_run ? run : max_run;
                    run = 0;
                }
                run++;
                prev = o;
            }
            min_run = run < min_run ? run : min_run;
            max_run = run > max_run ? run : max_run;
            cr_assert_leq(max_run - min_run, 1, "nb=%u ns=%u: ranges of %u..%u buckets", nb, ns,
                          min_run, max_run);
        }
    }
}

Test(keys, key_owner_is_the_owner_of_the_key_bucket) {
    for (uint32_t i = 0; i < 10000; i++) {
        uint64_t fid = ps_fid((uint16_t)i, (const char *)&i, sizeof(i));
        for (uint32_t ns = 1; ns <= 5; ns++) {
            uint32_t o = ps_key_owner(fid, 1024, ns);
            cr_assert_lt(o, ns);
            cr_assert_eq(o, ps_bucket_owner(ps_bucket(fid, 1024), 1024, ns));
        }
    }
}
