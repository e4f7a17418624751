#pragma once
/* Faulting a mapping in ahead of its first use, on a thread of its own.
 *
 * The memory tier's slab fills from its start, one row at a time; on this
 * kind of VM the first write to a page the host has not backed yet costs
 * the kernel's zeroing at ~0.4 GB/s, which was 47% of the loop thread while
 * pulls created rows (bench/README.md "Row creation: pages faulted in
 * ahead"). A ps_prefault keeps the next part of the slab faulted in
 * (MADV_POPULATE_WRITE) from another thread, so that the loop thread finds
 * the pages there. Contents are never touched: a page it populates reads
 * as zeros, as one the loop thread faults itself. */

#include <stddef.h>

typedef struct ps_prefault ps_prefault;

/* For the mapping [base, base + len), base page-aligned, borrowed until
 * ps_prefault_free().
 * Nothing is faulted in, and no thread runs, until ps_prefault_ahead().
 * Returns NULL when out of memory: the caller goes on without one. */
ps_prefault *ps_prefault_new(char *base, size_t len);

/* The caller is using the mapping up to offset `at`: ask for the next
 * `ahead` bytes to be faulted in. Returns at once; the thread starts on the
 * first call. Offsets only grow; they are clipped to the mapping. Accepts
 * NULL. One calling thread. */
void ps_prefault_ahead(ps_prefault *pf, size_t at, size_t ahead);

/* The offset up to which the thread has faulted the mapping in, or left it
 * to the caller, who had caught up (for tests). */
size_t ps_prefault_done(const ps_prefault *pf);

/* Wait until the thread has reached all that was asked for, or gave up
 * (for tests). */
void ps_prefault_wait(ps_prefault *pf);

/* Stop and join the thread (it ends the madvise() it is in first); the
 * mapping may be unmapped after. Accepts NULL. */
void ps_prefault_free(ps_prefault *pf);
