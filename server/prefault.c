/* Faulting a mapping in ahead of its first use: see prefault.h.
 *
 * One thread per ps_prefault, started by the first ps_prefault_ahead(). The
 * loop thread only raises `at` and `want` and posts the semaphore; the
 * thread populates [done, want) in 2 MiB steps (one huge page: a stop waits
 * for one step at most) and sleeps on the semaphore when it has caught up.
 *
 * When the caller has caught up with it (zeroing fresh memory is slower on
 * a VM than a loop thread creating rows), the thread goes on GAP past the
 * caller instead of on the page the caller is faulting in itself: then
 * both zero memory, on two cores, instead of one waiting on the other. No
 * lock is shared with the loop thread, so a fork() (tests fork shards)
 * cannot leave the child waiting on one; a child does not join the
 * parent's thread, which it does not have.
 *
 * If MADV_POPULATE_WRITE fails (a kernel older than 5.14, no memory) the
 * thread stops populating: the loop thread then faults the pages in itself
 * as it did without this, and an out-of-memory shows there as before. */

#include "prefault.h"

#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>

#define STEP ((size_t)2 << 20)
#define GAP ((size_t)4 << 20)

/* Whole steps: madvise() takes page-aligned addresses. */
static size_t step_up(size_t off) { return (off + STEP - 1) & ~(STEP - 1); }

struct ps_prefault {
    char *base;
    size_t len;
    _Atomic size_t at;      /* the caller's position */
    _Atomic size_t want;
    _Atomic size_t done;
    _Atomic bool stop;
    _Atomic bool given_up;
    sem_t wake;
    bool started;
    pid_t owner;            /* the process whose thread it is */
    pthread_t thread;
};

static void *populate(void *arg) {
    ps_prefault *pf = arg;
    for (;;) {
        while (sem_wait(&pf->wake) < 0 && errno == EINTR)
            ;
        size_t done = atomic_load(&pf->done);
        while (!atomic_load(&pf->stop) && done < atomic_load(&pf->want)) {
            size_t at = atomic_load(&pf->at);
            if (at > 0 && done <= at) { /* caught up: go on GAP past the caller */
                size_t skip = step_up(at + GAP), want = atomic_load(&pf->want);
                done = skip < want ? skip : want;
                atomic_store(&pf->done, done);
                continue;
            }
            size_t n = atomic_load(&pf->want) - done;
            if (n > STEP)
                n = STEP;
            if (madvise(pf->base + done, n, MADV_POPULATE_WRITE) < 0 && errno != EINTR) {
                atomic_store(&pf->given_up, true);
                return NULL;
            }
            done += n;
            atomic_store(&pf->done, done);
        }
        if (atomic_load(&pf->stop))
            return NULL;
    }
}

ps_prefault *ps_prefault_new(char *base, size_t len) {
    ps_prefault *pf = calloc(1, sizeof(*pf));
    if (!pf)
        return NULL;
    if (sem_init(&pf->wake, 0, 0) < 0) {
        free(pf);
        return NULL;
    }
    pf->base = base;
    pf->len = len;
    return pf;
}

void ps_prefault_ahead(ps_prefault *pf, size_t at, size_t ahead) {
    if (!pf || atomic_load(&pf->given_up))
        return;
    size_t upto = step_up(at + ahead);
    if (upto > pf->len)
        upto = pf->len;
    atomic_store(&pf->at, at);
    if (upto <= atomic_load(&pf->want))
        return;
    atomic_store(&pf->want, upto);
    if (!pf->started) {
        pf->owner = getpid();
        if (pthread_create(&pf->thread, NULL, populate, pf) != 0) {
            atomic_store(&pf->given_up, true);
            return;
        }
        pf->started = true;
    }
    sem_post(&pf->wake);
}

size_t ps_prefault_done(const ps_prefault *pf) { return pf ? atomic_load(&pf->done) : 0; }

void ps_prefault_wait(ps_prefault *pf) {
    if (!pf)
        return;
    while (!atomic_load(&pf->given_up) && atomic_load(&pf->done) < atomic_load(&pf->want))
        nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
}

void ps_prefault_free(ps_prefault *pf) {
    if (!pf)
        return;
    if (pf->started && pf->owner == getpid()) {
        atomic_store(&pf->stop, true);
        sem_post(&pf->wake);
        pthread_join(pf->thread, NULL);
    }
    sem_destroy(&pf->wake);
    free(pf);
}
