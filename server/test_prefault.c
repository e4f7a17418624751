/* Tests for faulting a mapping in ahead of its use (server/prefault.h).
 *
 * What the memory tier depends on: the thread faults in what is asked for,
 * only that, and never changes a byte, also of pages the caller writes
 * meanwhile; once the caller has caught up, it goes on past the caller
 * instead of behind it; and a ps_prefault that never started, or NULL, is
 * freed without a thread. mincore() tells which pages are resident. */

#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "prefault.h"

#define MIB ((size_t)1 << 20)
#define LEN (64 * MIB)

static char *map(void) {
    char *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(p, MAP_FAILED);
    /* 4 KiB pages, so that residency follows the requests exactly whatever
     * the machine's transparent huge page mode. */
    madvise(p, LEN, MADV_NOHUGEPAGE);
    return p;
}

/* Resident 4 KiB pages of [p + from, p + to). */
static size_t resident(char *p, size_t from, size_t to) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE), n = (to - from) / page, count = 0;
    unsigned char *v = malloc(n);
    cr_assert_eq(mincore(p + from, to - from, v), 0);
    for (size_t i = 0; i < n; i++)
        count += v[i] & 1;
    free(v);
    return count * page;
}

Test(prefault, faults_in_what_is_asked_for_and_no_more) {
    char *p = map();
    ps_prefault *pf = ps_prefault_new(p, LEN);
    cr_assert_not_null(pf);
    cr_assert_eq(resident(p, 0, LEN), 0, "nothing before the first request");
    ps_prefault_ahead(pf, 0, 16 * MIB);
    ps_prefault_wait(pf);
    cr_assert_eq(ps_prefault_done(pf), 16 * MIB);
    cr_assert_eq(resident(p, 0, 16 * MIB), 16 * MIB);
    cr_assert_eq(resident(p, 16 * MIB, LEN), 0, "faulted in past the request");
    for (size_t i = 0; i < 16 * MIB; i += 4096)
        cr_assert_eq(p[i], 0);
    /* A request past the end is clipped to the mapping. */
    ps_prefault_ahead(pf, 0, 10 * LEN);
    ps_prefault_wait(pf);
    cr_assert_eq(ps_prefault_done(pf), LEN);
    cr_assert_eq(resident(p, 0, LEN), LEN);
    ps_prefault_free(pf);
    munmap(p, LEN);
}

Test(prefault, never_changes_what_the_caller_wrote) {
    char *p = map();
    ps_prefault *pf = ps_prefault_new(p, LEN);
    /* The caller writes every byte while the thread faults the same range
     * in, a little ahead of it; every byte must read back. */
    for (size_t off = 0; off < LEN; off += 1024) {
        if (off % (2 * MIB) == 0)
            ps_prefault_ahead(pf, off, 8 * MIB);
        memset(p + off, (int)(off / 1024 % 251) + 1, 1024);
    }
    ps_prefault_wait(pf);
    for (size_t off = 0; off < LEN; off += 1024)
        cr_assert_eq((unsigned char)p[off + 1023], off / 1024 % 251 + 1, "byte %zu", off + 1023);
    ps_prefault_free(pf);
    munmap(p, LEN);
}

Test(prefault, a_caller_that_caught_up_is_overtaken_not_followed) {
    char *p = map();
    ps_prefault *pf = ps_prefault_new(p, LEN);
    ps_prefault_ahead(pf, 0, 4 * MIB);
    ps_prefault_wait(pf);
    /* The caller is at 20 MiB, past the thread's 4 MiB: the thread goes on a
     * gap past it, and leaves 4-20 MiB to the caller. */
    ps_prefault_ahead(pf, 20 * MIB, 20 * MIB);
    ps_prefault_wait(pf);
    cr_assert_eq(ps_prefault_done(pf), 40 * MIB);
    cr_assert_eq(resident(p, 4 * MIB, 20 * MIB), 0, "it went back to pages behind the caller");
    cr_assert_gt(resident(p, 20 * MIB, 40 * MIB), 8 * MIB);
    cr_assert_eq(resident(p, 40 * MIB, LEN), 0);
    ps_prefault_free(pf);
    munmap(p, LEN);
}

Test(prefault, unstarted_and_null_are_freed) {
    char *p = map();
    ps_prefault_free(ps_prefault_new(p, LEN));
    ps_prefault_free(NULL);
    ps_prefault_ahead(NULL, 0, LEN);
    cr_assert_eq(ps_prefault_done(NULL), 0);
    cr_assert_eq(resident(p, 0, LEN), 0);
    munmap(p, LEN);
}
