#include "periodic.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "checkpoint.h"
#include "client.h"
#include "error.h"
#include "log.h"

struct ps_periodic {
    const ps_config *cfg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
};

static void *run(void *arg) {
    ps_periodic *p = arg;
    const ps_config *cfg = p->cfg;
    ps_client *c = NULL;
    char err[1024];
    pthread_mutex_lock(&p->mu);
    for (;;) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += cfg->checkpoint_interval_s;
        while (!p->stop && pthread_cond_timedwait(&p->cv, &p->mu, &until) != ETIMEDOUT)
            ;
        if (p->stop)
            break;
        pthread_mutex_unlock(&p->mu);
        if (!c) {
            ps_client_options co = {.cfg = cfg, .name = "ctrps-server checkpointer", .timeout_ms = 10000};
            if (ps_client_new(&co, &c, err, sizeof(err)) < 0) {
                ps_error("periodic checkpoint: %s", err);
                c = NULL;
            }
        }
        char id[PS_CHECKPOINT_ID_MAX];
        if (c && ps_checkpoint_take(c, cfg, cfg->checkpoint_dir, cfg->checkpoint_wait_s, id, sizeof(id),
                                    err, sizeof(err)) == 0) {
            ps_info("checkpoint %s/%s taken", cfg->checkpoint_dir, id);
            if (ps_checkpoint_prune(cfg->checkpoint_dir, cfg->checkpoint_retention, err, sizeof(err)) < 0)
                ps_warn("pruning checkpoints: %s", err);
        } else if (c) {
            ps_error("periodic checkpoint failed: %s", err);
        }
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    ps_client_free(c);
    return NULL;
}

int ps_periodic_start(const ps_config *cfg, ps_periodic **ret) {
    *ret = NULL;
    if (!cfg->checkpoint_interval_s)
        return 0;
    ps_periodic *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->cfg = cfg;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    int r = pthread_create(&p->thread, NULL, run, p);
    if (r != 0) {
        free(p);
        return -r;
    }
    *ret = p;
    return 0;
}

void ps_periodic_stop(ps_periodic *p) {
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}
