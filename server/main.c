/* ctrps-server: one shard of a ctrps cluster. */
#include <errno.h>
#include <getopt.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "barrier.h"
#include "config.h"
#include "error.h"
#include "keys.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "periodic.h"
#include "promtext.h"
#include "service.h"
#include "shard.h"
#include "version.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: ctrps-server --config FILE --shard N [options]\n"
            "\n"
            "Serve shard N of the cluster described by FILE: its sparse tables, their\n"
            "optimizer state in RocksDB, and the push log, over the ctrps RPC protocol.\n"
            "\n"
            "  --config FILE       cluster config (INI); required\n"
            "  --shard N           shard index in [cluster] shards, from 0; required\n"
            "  --data-dir DIR      overrides [server] data_dir; files go to DIR/shard-N\n"
            "  --listen HOST:PORT  overrides the listen address: [server] bind (default:\n"
            "                      the host of this shard's [cluster] shards entry) and\n"
            "                      the port from that entry; HOST is a name, an IPv4\n"
            "                      address or [IPv6]; port 0 picks a free one\n"
            "  --ready-file FILE   write HOST:PORT to FILE once serving (for scripts/tests)\n"
            "  --metrics-listen HOST:PORT\n"
            "                      serve /metrics, /healthz and /readyz there (overrides\n"
            "                      [server] metrics_listen, which shards sharing a config\n"
            "                      on one host cannot all use); port 0 picks a free one,\n"
            "                      logged as \"metrics on http://HOST:PORT/metrics\"\n"
            "  --restore D         replace this shard's data with its copy in the cluster\n"
            "                      checkpoint D (or the newest one under D) before starting\n"
            "  --log-level LEVEL   debug | info | warn | error (default info)\n"
            "  --help              this text\n"
            "  --version           print the version and exit\n"
            "\n"
            "SIGTERM or SIGINT stops the shard after writing every row back to RocksDB.\n"
            "Exit status: 0 after a clean stop, 1 on a runtime error, 2 on bad usage or config.\n");
}

/* What /metrics shows while the shard opens its store and replays its push
 * log (rendered on the endpoint's thread; the count is written by the
 * replay through on_replay). */
typedef struct recovery {
    uint32_t shard;
    uint64_t started_ns;
    _Atomic uint64_t records;
} recovery;

static void on_replay(void *ctx, uint64_t records) {
    atomic_store_explicit(&((recovery *)ctx)->records, records, memory_order_relaxed);
}

static int render_recovery(void *ctx, ps_buf *out) {
    recovery *rc = ctx;
    char label[64], id[16];
    snprintf(id, sizeof(id), "%u", rc->shard);
    ps_prom_labels(label, sizeof(label), "shard", id, NULL);
    ps_prom p;
    ps_prom_init(&p, out, label);
    ps_prom_scalar(&p, "ctrps_recovery_replayed_records_total", PS_PROM_COUNTER,
                   "push-log records replayed at start",
                   (double)atomic_load_explicit(&rc->records, memory_order_relaxed));
    ps_prom_scalar(&p, "ctrps_ready", PS_PROM_GAUGE, "1 while the shard serves (what /readyz says)", 0);
    ps_prom_scalar(&p, "ctrps_recovering", PS_PROM_GAUGE,
                   "1 while the shard replays its push log at start", 1);
    ps_prom_scalar(&p, "ctrps_recovery_duration_seconds", PS_PROM_GAUGE,
                   "time the shard took to open its store and replay its push log at start",
                   (double)(ps_prom_now_ns() - rc->started_ns) / 1e9);
    return ps_prom_finish(&p);
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},   {"shard", required_argument, NULL, 's'},
        {"data-dir", required_argument, NULL, 'd'}, {"listen", required_argument, NULL, 'l'},
        {"ready-file", required_argument, NULL, 'r'}, {"log-level", required_argument, NULL, 'v'},
        {"restore", required_argument, NULL, 'R'},   {"help", no_argument, NULL, 'h'},
        {"metrics-listen", required_argument, NULL, 'M'}, {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0}};
    const char *config_path = NULL, *data_dir = NULL, *listen = NULL, *ready_file = NULL;
    const char *restore_from = NULL, *metrics_listen = NULL;
    long shard_arg = -1;
    ps_log_level level = PS_LOG_INFO;
    int opt;
    ps_log_init("ctrps-server", PS_LOG_INFO);
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 's': {
            uint64_t v;
            if (ps_parse_u64(optarg, &v) < 0 || v > 65535) {
                fprintf(stderr, "ctrps-server: --shard: not a shard index: '%s'\n", optarg);
                return 2;
            }
            shard_arg = (long)v;
            break;
        }
        case 'd':
            data_dir = optarg;
            break;
        case 'l':
            listen = optarg;
            break;
        case 'r':
            ready_file = optarg;
            break;
        case 'R':
            restore_from = optarg;
            break;
        case 'M':
            metrics_listen = optarg;
            break;
        case 'v':
            if (ps_log_level_parse(optarg, &level) < 0) {
                fprintf(stderr, "ctrps-server: --log-level: expected debug, info, warn or error\n");
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("ctrps-server %s\n", ps_version());
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ctrps-server: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!config_path || shard_arg < 0) {
        fprintf(stderr, "ctrps-server: --config and --shard are required (see --help)\n");
        return 2;
    }
    ps_log_init("ctrps-server", level);

    char err[1024];
    ps_config *cfg;
    int r = ps_config_load(config_path, NULL, &cfg, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "ctrps-server: %s\n", err);
        return 2;
    }
    if ((uint32_t)shard_arg >= cfg->nshards) {
        fprintf(stderr, "ctrps-server: --shard %ld: the config lists %u shard(s)\n", shard_arg,
                cfg->nshards);
        ps_config_free(cfg);
        return 2;
    }
    uint32_t shard_id = (uint32_t)shard_arg;
    char host[256];
    int port;
    /* Listen where the clients are told the shard is, unless [server] bind
     * (e.g. 0.0.0.0 in a container) or --listen says otherwise. */
    ps_parse_hostport(cfg->shards[shard_id], host, sizeof(host), &port);
    if (cfg->server.bind[0])
        ps_parse_host(cfg->server.bind, host, sizeof(host));
    if (listen && ps_parse_hostport(listen, host, sizeof(host), &port) < 0) {
        fprintf(stderr, "ctrps-server: --listen: expected HOST:PORT, got '%s'\n", listen);
        ps_config_free(cfg);
        return 2;
    }
    char dir[PS_PATH_MAX + 32];
    snprintf(dir, sizeof(dir), "%s/shard-%u", data_dir ? data_dir : cfg->server.data_dir, shard_id);

    int status = 1;
    ps_server *srv = NULL;
    ps_shard *shard = NULL;
    ps_service *svc = NULL;
    ps_metrics *metrics = NULL;
    static recovery rc;
    rc.shard = shard_id;
    rc.started_ns = ps_prom_now_ns();
    /* The endpoint comes first: /healthz answers (and /metrics shows the
     * replay's progress) while a long push log is replayed. */
    if (!metrics_listen && cfg->server.metrics_listen[0])
        metrics_listen = cfg->server.metrics_listen;
    if (metrics_listen) {
        r = ps_metrics_start(metrics_listen, &metrics, err, sizeof(err));
        if (r < 0)
            goto out;
        ps_metrics_set_render(metrics, render_recovery, &rc);
        char mhost[256];
        int mport;
        ps_parse_hostport(metrics_listen, mhost, sizeof(mhost), &mport);
        ps_info("metrics on http://%s:%d/metrics", mhost, ps_metrics_port(metrics));
    }
    ps_server_options so = {.host = host, .port = port, .ready_file = ready_file, .metrics = metrics};
    r = ps_server_new(cfg, &so, &srv, err, sizeof(err));
    if (r < 0)
        goto out;
    ps_shard_options sho = {.shard_id = shard_id,
                            .data_dir = dir,
                            .notify = ps_server_notify,
                            .notify_ctx = srv,
                            .on_replay = on_replay,
                            .on_replay_ctx = &rc};
    if (restore_from) {
        r = ps_barrier_restore(restore_from, shard_id, dir, err, sizeof(err));
        if (r < 0)
            goto out;
        ps_info("restored shard %u from %s", shard_id, restore_from);
    }
    ps_info("opening shard %u in %s", shard_id, dir);
    if (cfg->nshards > 0) {
        uint32_t first = UINT32_MAX, last = 0;
        for (uint32_t b = 0; b < cfg->buckets; b++)
            if (ps_bucket_owner(b, cfg->buckets, cfg->nshards) == shard_id) {
                first = first == UINT32_MAX ? b : first;
                last = b;
            }
        ps_debug("map version %llu: shard %u of %u owns buckets %u..%u of %u; the shards are at %s%s",
                 (unsigned long long)cfg->map_version, shard_id, cfg->nshards, first, last,
                 cfg->buckets, cfg->shards[0], cfg->nshards > 1 ? ", ..." : "");
    }
    r = ps_shard_open(cfg, &sho, &shard, err, sizeof(err));
    if (r < 0)
        goto out;
    ps_shard_counters sc;
    ps_shard_counters_get(shard, &sc);
    if (sc.replayed_records)
        ps_info("replayed %llu push-log records", (unsigned long long)sc.replayed_records);
    ps_server_set_recovery_seconds(srv, (double)(ps_prom_now_ns() - rc.started_ns) / 1e9);
    ps_auth_secret secret;
    r = ps_auth_load(cfg->server.auth_secret_file, &secret, err, sizeof(err));
    if (r < 0)
        goto out;
    if (secret.len)
        ps_info("clients must authenticate (auth_secret_file %s)", cfg->server.auth_secret_file);
    r = ps_service_new(shard, &secret, &svc);
    ps_auth_wipe(&secret);
    if (r < 0)
        goto out;
    r = ps_server_listen(srv, shard, svc, err, sizeof(err));
    if (r < 0)
        goto out;
    ps_periodic *periodic = NULL;
    if (shard_id == 0 && ps_periodic_start(cfg, &periodic) == 0 && periodic)
        ps_info("checkpointing the cluster every %u s into %s (keeping %u)", cfg->checkpoint_interval_s,
                cfg->checkpoint_dir, cfg->checkpoint_retention);
    ps_server_run(srv);
    /* Stop checkpointing before the loop that serves its RPCs is gone. A
     * barrier in progress times out in the coordinator, which then ENDs it. */
    ps_periodic_stop(periodic);
    uint64_t requests, errors;
    ps_service_totals(svc, &requests, &errors);
    ps_info("served %llu requests (%llu errors); writing back", (unsigned long long)requests,
            (unsigned long long)errors);
    r = ps_shard_close(shard);
    shard = NULL;
    if (r < 0) {
        snprintf(err, sizeof(err), "final write-back failed: %s", ps_strerror(r));
        goto out;
    }
    ps_info("stopped cleanly");
    status = 0;
out:
    if (status != 0)
        ps_error("%s", err[0] ? err : ps_strerror(r));
    ps_shard_close(shard);
    ps_server_free(srv);
    ps_metrics_stop(metrics);
    ps_service_free(svc);
    ps_config_free(cfg);
    return status;
}
