/* ctrps-cli: lookup, pull, push, export, stats, checkpoints, model export
 * and data generation against a ctrps cluster, over the same RPC client the
 * worker uses. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "client.h"
#include "config.h"
#include "error.h"
#include "export.h"
#include "fsutil.h"
#include "gen.h"
#include "keys.h"
#include "log.h"
#include "move.h"
#include "text.h"
#include "version.h"
#include "wconfig.h"

static const char *prog = "ctrps-cli";

static void usage(FILE *out) {
    fprintf(out,
            "usage: ctrps-cli [--config FILE] [--timeout MS] COMMAND [options]\n"
            "\n"
            "Commands (all but gen and checkpoint --list/--prune need --config):\n"
            "  lookup --table T (--fid N | --slot S --value V)... [--state]\n"
            "      read rows without creating them; one line per key:\n"
            "      fid<TAB>found|missing<TAB>v1 ... vd  (with --state, the optimizer state\n"
            "      follows the weights). --slot alone picks the slot's table.\n"
            "  pull --table T (--fid N | --slot S --value V)...\n"
            "      read rows; a key without a row reads as the table's init rule (and\n"
            "      gets the row, unless the table has admission on);\n"
            "      fid<TAB>v1 ... vd\n"
            "  push --table T (--fid N | --slot S --value V) --grad g1,...,gd ...\n"
            "      apply exactly one optimizer step per key with the gradient given\n"
            "      after it; prints the rows applied and the non-finite rows dropped\n"
            "      (keys admission kept out are neither)\n"
            "  export --table T [--state]\n"
            "      every row: fid<TAB>field<TAB>v1 ... vd, field w (and with --state\n"
            "      z and n for FTRL, acc for AdaGrad), in store order per shard\n"
            "  move --buckets A-B --to N | move --abort N\n"
            "      move buckets A..B (inclusive) to shard N of the config's list: its\n"
            "      rows are copied while it is served, then the rows pushes changed\n"
            "      meanwhile (pushes into the range are slowed if they change it as fast\n"
            "      as it is copied); then the range pauses briefly for the last changes\n"
            "      and the push sequence numbers, and the cluster map's epoch flips.\n"
            "      Progress (rows, rows/s, ETA) on stderr; the pause and its parts are\n"
            "      printed at the end.\n"
            "      --abort N gives up a move from shard N that never reached its map flip:\n"
            "      the range is thawed there and any staged copy elsewhere removed\n"
            "  reshard\n"
            "      with --config NEW.ini listing the new set of shards (same buckets):\n"
            "      move the cluster to an even split over them, range by range\n"
            "  stats\n"
            "      one JSON object per shard: rows per table, requests, errors,\n"
            "      dropped non-finite rows, RocksDB bytes, counters\n"
            "  checkpoint --dir D [--wait S] [--keep N]\n"
            "      consistent cluster checkpoint under D: every worker pauses at a batch\n"
            "      boundary once its pushes are acknowledged, every shard copies its\n"
            "      database, a manifest records the copies and the workers' input\n"
            "      positions, then training resumes; prints D/<id>. --keep prunes to the\n"
            "      newest N. Restore with ctrps-server --restore D, ctrps-worker --resume D\n"
            "  checkpoint --list --dir D | checkpoint --prune --keep N --dir D\n"
            "  export-model --dir D [--state] [--checkpoint C | --checkpoint-dir R] [--wait S]\n"
            "      write the model to the new or empty directory D (docs/export-format.md):\n"
            "      TABLE.fids.npy, TABLE.weights.npy (with --state TABLE.state.npy: the\n"
            "      optimizer state), BLOCK.npy per dense block, config.ini and\n"
            "      manifest.json (written last: model type, config, tables, fid hashing\n"
            "      rule with slot ids, sha256 per file). From a live cluster it first takes\n"
            "      a checkpoint (the barrier of `checkpoint`; --wait S as there, default\n"
            "      [cluster] checkpoint_wait_s) under R, default [cluster] checkpoint_dir,\n"
            "      without either in a temporary directory beside D removed afterwards,\n"
            "      and exports that copy: one consistent state. --checkpoint C exports a\n"
            "      checkpoint (a ckpt-* directory, or a root: its newest) with no shard\n"
            "      running. Memory does not grow with the tables. Prints D<TAB>the\n"
            "      checkpoint read ('-' for a temporary one)\n"
            "  gen --rows N --seed S --format criteo|slots --out FILE|- [--drift ROWS]\n"
            "      write a synthetic click log and FILE.truth.json, optionally drifting\n"
            "      (vocabularies churn, the true weights move); see gen --help\n"
            "\n"
            "Options:\n"
            "  --config FILE   cluster config (INI)\n"
            "  --timeout MS    per-request deadline, reconnects included (default 10000)\n"
            "  --help          this text\n"
            "  --version       print the version and exit\n"
            "\n"
            "Exit status: 0 on success, 1 when the cluster reports an error or is\n"
            "unreachable, 2 on bad usage. Floats print with 9 significant digits, which\n"
            "round-trips float32 exactly.\n");
}

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

/* ---- keyed command arguments ------------------------------------------------ */

typedef struct keyed {
    const char *table;
    const char *slot;            /* the most recent --slot */
    uint64_t *fids;
    float *grads;                /* push: dim per key, once the table is known */
    char **grad_text;            /* push: --grad text per key */
    size_t n, cap;
    bool state;
} keyed;

static int keyed_add(keyed *k, uint64_t fid) {
    if (k->n == k->cap) {
        size_t cap = k->cap ? 2 * k->cap : 16;
        uint64_t *f = realloc(k->fids, cap * sizeof(*f));
        if (!f)
            return -ENOMEM;
        k->fids = f;
        char **g = realloc(k->grad_text, cap * sizeof(*g));
        if (!g)
            return -ENOMEM;
        k->grad_text = g;
        k->cap = cap;
    }
    k->grad_text[k->n] = NULL;
    k->fids[k->n++] = fid;
    return 0;
}

static void keyed_free(keyed *k) {
    free(k->fids);
    free(k->grads);
    free(k->grad_text);
}

/* Parse --table/--fid/--slot/--value/--grad/--state. */
static int parse_keyed(int argc, char **argv, keyed *k, bool allow_grad, bool allow_state) {
    static const struct option opts[] = {{"table", required_argument, NULL, 't'},
                                         {"fid", required_argument, NULL, 'f'},
                                         {"slot", required_argument, NULL, 's'},
                                         {"value", required_argument, NULL, 'v'},
                                         {"grad", required_argument, NULL, 'g'},
                                         {"state", no_argument, NULL, 'S'},
                                         {NULL, 0, NULL, 0}};
    optind = 1;
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 't':
            k->table = optarg;
            break;
        case 'f': {
            uint64_t fid;
            if (ps_parse_u64(optarg, &fid) < 0)
                return fail(2, "--fid: not an unsigned 64-bit integer: '%s'", optarg);
            if (keyed_add(k, fid) < 0)
                return fail(1, "out of memory");
            break;
        }
        case 's':
            k->slot = optarg;
            break;
        case 'v':
            if (!k->slot)
                return fail(2, "--value '%s' needs a --slot before it", optarg);
            if (keyed_add(k, ps_fid(ps_slot_id(k->slot), optarg, strlen(optarg))) < 0)
                return fail(1, "out of memory");
            break;
        case 'g':
            if (!allow_grad)
                return fail(2, "--grad applies only to push");
            if (k->n == 0 || k->grad_text[k->n - 1])
                return fail(2, "--grad '%s' must follow its own --fid or --value", optarg);
            k->grad_text[k->n - 1] = optarg;
            break;
        case 'S':
            if (!allow_state)
                return fail(2, "--state does not apply here");
            k->state = true;
            break;
        default:
            return 2;
        }
    }
    if (optind < argc)
        return fail(2, "unexpected argument '%s'", argv[optind]);
    return 0;
}

static const ps_table_config *resolve_table(const ps_config *cfg, keyed *k, int *ret_code) {
    if (!k->table && k->slot) {
        const ps_table_config *t = ps_config_slot_table(cfg, k->slot);
        if (!t) {
            *ret_code = fail(2, "slot '%s' maps to no table in %s; pass --table", k->slot, cfg->path);
            return NULL;
        }
        return t;
    }
    if (!k->table) {
        *ret_code = fail(2, "--table is required");
        return NULL;
    }
    const ps_table_config *t = ps_config_table(cfg, k->table);
    if (!t)
        *ret_code = fail(2, "unknown table '%s' (not in %s)", k->table, cfg->path);
    return t;
}

static void print_floats(const float *v, size_t n) {
    for (size_t j = 0; j < n; j++)
        printf("%s%.9g", j ? " " : "", (double)v[j]);
}

static int cmd_lookup(ps_client *cl, const ps_config *cfg, int argc, char **argv, bool pull) {
    keyed k = {0};
    int code = parse_keyed(argc, argv, &k, false, !pull);
    const ps_table_config *t = code ? NULL : resolve_table(cfg, &k, &code);
    if (t && k.n == 0)
        code = fail(2, "no keys: give --fid N or --slot S --value V");
    if (!t || code || k.n == 0) {
        keyed_free(&k);
        return code ? code : 2;
    }
    uint32_t dim = t->dim, width = ps_optim_state_width(&t->opt, t->dim);
    float *values = malloc(k.n * dim * sizeof(float));
    float *state = k.state ? malloc(k.n * width * sizeof(float)) : NULL;
    uint8_t *found = malloc(k.n);
    char err[1024];
    int r = -ENOMEM;
    if (values && found && (!k.state || state))
        r = pull ? ps_client_pull(cl, t->name, dim, k.fids, k.n, values, err, sizeof(err))
                 : ps_client_lookup(cl, t->name, dim, width, k.fids, k.n, found, values, state, err,
                                    sizeof(err));
    if (r < 0) {
        code = fail(1, "%s %s: %s", pull ? "pull" : "lookup", t->name, r == -ENOMEM ? "out of memory" : err);
    } else {
        for (size_t i = 0; i < k.n; i++) {
            printf("%" PRIu64 "\t", k.fids[i]);
            if (!pull)
                printf("%s\t", found[i] ? "found" : "missing");
            print_floats(values + i * dim, dim);
            if (state) {
                putchar('\t');
                print_floats(state + i * width, width);
            }
            putchar('\n');
        }
    }
    free(values);
    free(state);
    free(found);
    keyed_free(&k);
    return code;
}

static int cmd_push(ps_client *cl, const ps_config *cfg, int argc, char **argv) {
    keyed k = {0};
    int code = parse_keyed(argc, argv, &k, true, false);
    const ps_table_config *t = code ? NULL : resolve_table(cfg, &k, &code);
    if (t && k.n == 0)
        code = fail(2, "no keys: give --fid N --grad g1,...,gd");
    if (!t || code) {
        keyed_free(&k);
        return code ? code : 2;
    }
    k.grads = malloc(k.n * t->dim * sizeof(float));
    if (!k.grads) {
        keyed_free(&k);
        return fail(1, "out of memory");
    }
    for (size_t i = 0; i < k.n && !code; i++) {
        if (!k.grad_text[i]) {
            code = fail(2, "key %" PRIu64 " has no --grad", k.fids[i]);
            break;
        }
        char *text = strdup(k.grad_text[i]), *save = NULL;
        uint32_t j = 0;
        for (char *tok = strtok_r(text, ",", &save); tok; tok = strtok_r(NULL, ",", &save), j++) {
            double g;
            /* nan and inf are accepted on purpose: the server drops them. */
            char *end;
            g = strtod(tok, &end);
            if (end == tok || *end) {
                code = fail(2, "--grad: '%s' is not a number", tok);
                break;
            }
            if (j < t->dim)
                k.grads[i * t->dim + j] = (float)g;
        }
        free(text);
        if (!code && j != t->dim)
            code = fail(2, "--grad for key %" PRIu64 " has %u values; table %s has dim %u", k.fids[i],
                        j, t->name, t->dim);
    }
    if (!code) {
        char err[1024];
        uint64_t applied = 0, dropped = 0;
        int r = ps_client_push(cl, t->name, t->dim, k.fids, k.n, k.grads, &applied, &dropped, err,
                               sizeof(err));
        if (r < 0)
            code = fail(1, "push %s: %s", t->name, err);
        else
            printf("applied %" PRIu64 " dropped_nonfinite %" PRIu64 "\n", applied, dropped);
    }
    keyed_free(&k);
    return code;
}

static int cmd_export(ps_client *cl, const ps_config *cfg, int argc, char **argv) {
    keyed k = {0};
    int code = parse_keyed(argc, argv, &k, false, true);
    const ps_table_config *t = code ? NULL : resolve_table(cfg, &k, &code);
    if (!t || code || k.n) {
        if (!code && k.n)
            code = fail(2, "export takes no keys");
        keyed_free(&k);
        return code ? code : 2;
    }
    const char *fields[3];
    int nfields = ps_optim_fields(&t->opt, fields);
    uint32_t width = ps_optim_state_width(&t->opt, t->dim);
    for (uint32_t s = 0; s < cfg->nshards && !code; s++) {
        ps_export_cursor cursor = {0};
        for (;;) {
            ps_export_page pg;
            char err[1024];
            int r = ps_client_export_page(cl, s, t->name, 8192, k.state, &cursor, &pg, err, sizeof(err));
            if (r < 0) {
                code = fail(1, "export %s: %s", t->name, err);
                break;
            }
            const ps_export_page *e = &pg;
            if (e->dim != t->dim || (k.state && e->state_dim != width)) {
                ps_export_page_deinit(&pg);
                code = fail(1, "export %s: shard %u answered with another table shape", t->name, s);
                break;
            }
            for (size_t i = 0; i < e->n; i++) {
                printf("%" PRIu64 "\tw\t", e->keys[i]);
                print_floats(e->values + i * t->dim, t->dim);
                putchar('\n');
                for (int f = 1; k.state && f < nfields; f++) {
                    /* State layout: w[d] then z[d] n[d], or acc[d] (acc[1] row-wise). */
                    size_t off = (size_t)f * t->dim, len = t->dim;
                    if (off + len > width)
                        len = width - off;
                    printf("%" PRIu64 "\t%s\t", e->keys[i], fields[f]);
                    print_floats(e->state + i * width + off, len);
                    putchar('\n');
                }
            }
            bool done = e->done || e->n == 0;
            ps_export_page_deinit(&pg);
            if (done)
                break;
        }
    }
    keyed_free(&k);
    return code;
}

static int cmd_stats(ps_client *cl, const ps_config *cfg, int argc, char **argv) {
    if (argc > 1)
        return fail(2, "stats takes no arguments");
    (void)argv;
    int code = 0;
    for (uint32_t s = 0; s < cfg->nshards; s++) {
        ps_shard_stats st;
        char err[1024];
        int r = ps_client_stats(cl, s, &st, err, sizeof(err));
        if (r < 0) {
            code = fail(1, "stats: %s", err);
            continue;
        }
        const ps_shard_stats *x = &st;
        printf("{\"shard\":%u,\"address\":", x->shard_id);
        ps_json_string(stdout, cfg->shards[s]);
        printf(",\"durability\":");
        ps_json_string(stdout, x->durability);
        printf(",\"rocksdb_bytes\":%" PRIu64 ",\"rocksdb_pending_compaction_bytes\":%" PRIu64
               ",\"rocksdb_running_compactions\":%" PRIu32 ",\"store_error\":",
               x->rocksdb_bytes, x->rocksdb_pending_compaction_bytes, x->rocksdb_running_compactions);
        ps_json_string(stdout, x->store_error);
        printf(",\"tables\":{");
        for (size_t i = 0; i < x->ntables; i++) {
            const ps_table_stats *t = &x->tables[i].stats;
            printf("%s", i ? "," : "");
            ps_json_string(stdout, x->tables[i].name);
            const char *sep = ":{";
#define PRINT_STAT(name, type, metric, help)                                                             \
    printf("%s\"" #name "\":%" PRIu64, sep, t->name);                                          \
    sep = ",";
            PS_TABLE_STATS_MAP(PRINT_STAT)
#undef PRINT_STAT
            printf("}");
        }
        printf("},\"counters\":{");
        for (size_t i = 0; i < x->ncounters; i++) {
            printf("%s", i ? "," : "");
            ps_json_string(stdout, x->counters[i].name);
            printf(":%" PRIu64, x->counters[i].value);
        }
        printf("}}\n");
        ps_shard_stats_deinit(&st);
    }
    return code;
}

/* checkpoint: parsed before the config is loaded, as --list and --prune
 * need none. Returns -1 when the cluster is needed (take), else an exit code. */
typedef struct ckpt_args {
    const char *dir;
    uint64_t wait_s, keep;
    bool list, prune;
} ckpt_args;

static int parse_checkpoint(int argc, char **argv, ckpt_args *a) {
    static const struct option opts[] = {{"dir", required_argument, NULL, 'd'},
                                         {"wait", required_argument, NULL, 'w'},
                                         {"keep", required_argument, NULL, 'k'},
                                         {"list", no_argument, NULL, 'l'},
                                         {"prune", no_argument, NULL, 'p'},
                                         {NULL, 0, NULL, 0}};
    a->wait_s = 600;
    optind = 1;
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'd':
            a->dir = optarg;
            break;
        case 'w':
            if (ps_parse_u64(optarg, &a->wait_s) < 0 || a->wait_s == 0)
                return fail(2, "--wait: expected seconds > 0, got '%s'", optarg);
            break;
        case 'k':
            if (ps_parse_u64(optarg, &a->keep) < 0 || a->keep == 0)
                return fail(2, "--keep: expected a count > 0, got '%s'", optarg);
            break;
        case 'l':
            a->list = true;
            break;
        case 'p':
            a->prune = true;
            break;
        default:
            return 2;
        }
    }
    if (optind < argc)
        return fail(2, "checkpoint: unexpected argument '%s'", argv[optind]);
    if (!a->dir)
        return fail(2, "checkpoint needs --dir D");
    if (a->prune && !a->keep)
        return fail(2, "checkpoint --prune needs --keep N");
    char err[1024];
    if (a->list) {
        char **ids;
        size_t n;
        int r = ps_checkpoint_list(a->dir, &ids, &n);
        if (r < 0)
            return fail(1, "%s: %s", a->dir, strerror(-r));
        for (size_t i = 0; i < n; i++)
            printf("%s/%s\n", a->dir, ids[i]);
        ps_checkpoint_list_free(ids, n);
        return 0;
    }
    if (a->prune)
        return ps_checkpoint_prune(a->dir, (uint32_t)a->keep, err, sizeof(err)) < 0 ? fail(1, "%s", err) : 0;
    return -1;
}

static int cmd_checkpoint(ps_client *cl, const ps_config *cfg, const ckpt_args *a) {
    char id[PS_CHECKPOINT_ID_MAX], err[1024];
    int r = ps_checkpoint_take(cl, cfg, a->dir, (uint32_t)a->wait_s, id, sizeof(id), err, sizeof(err));
    if (r < 0)
        return fail(1, "checkpoint: %s", err);
    printf("%s/%s\n", a->dir, id);
    if (a->keep && ps_checkpoint_prune(a->dir, (uint32_t)a->keep, err, sizeof(err)) < 0)
        return fail(1, "checkpoint taken, but pruning failed: %s", err);
    return 0;
}

/* export-model: parsed before the config is loaded (it needs the worker's
 * config extension, and no cluster with --checkpoint). */
typedef struct model_args {
    const char *dir, *checkpoint, *checkpoint_dir;
    uint64_t wait_s;
    bool state;
} model_args;

static int parse_export_model(int argc, char **argv, model_args *a) {
    static const struct option opts[] = {{"dir", required_argument, NULL, 'd'},
                                         {"state", no_argument, NULL, 'S'},
                                         {"checkpoint", required_argument, NULL, 'c'},
                                         {"checkpoint-dir", required_argument, NULL, 'r'},
                                         {"wait", required_argument, NULL, 'w'},
                                         {NULL, 0, NULL, 0}};
    a->wait_s = 0;
    optind = 1;
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'd':
            a->dir = optarg;
            break;
        case 'S':
            a->state = true;
            break;
        case 'c':
            a->checkpoint = optarg;
            break;
        case 'r':
            a->checkpoint_dir = optarg;
            break;
        case 'w':
            if (ps_parse_u64(optarg, &a->wait_s) < 0 || a->wait_s == 0 || a->wait_s > 86400)
                return fail(2, "--wait: expected seconds in 1..86400, got '%s'", optarg);
            break;
        default:
            return 2;
        }
    }
    if (optind < argc)
        return fail(2, "export-model: unexpected argument '%s'", argv[optind]);
    if (!a->dir || !a->dir[0])
        return fail(2, "export-model needs --dir D");
    if (a->checkpoint && (a->checkpoint_dir || a->wait_s))
        return fail(2, "export-model: --checkpoint C reads a checkpoint; --checkpoint-dir and "
                       "--wait are for taking one from a live cluster");
    return 0;
}

static int export_code(int r) {
    return r == -EINVAL || r == -EEXIST || r == -ENOENT || r == PS_ENOT_FOUND || r == PS_ECONFIG
               ? 2
               : 1;
}

/* From a live cluster: a checkpoint under the root given, or in a temporary
 * root beside D (which the shards must be able to write, as for
 * `checkpoint`), removed once exported. */
static int cmd_export_model(ps_client *cl, const ps_config *cfg, const model_args *a) {
    char err[1024], ckpt[PATH_MAX + PS_CHECKPOINT_ID_MAX + 2];
    ps_model_export_options o = {.cfg = cfg, .dir = a->dir, .with_state = a->state};
    if (a->checkpoint) {
        o.checkpoint = a->checkpoint;
        o.source_kind = "checkpoint";
        int r = ps_model_export(&o, err, sizeof(err));
        if (r < 0)
            return fail(export_code(r), "export-model: %s", err);
        printf("%s\t%s\n", a->dir, a->checkpoint);
        return 0;
    }
    const char *root = a->checkpoint_dir ? a->checkpoint_dir
                       : cfg->checkpoint_dir[0] ? cfg->checkpoint_dir
                                                : NULL;
    char tmp[PATH_MAX];
    if (!root) {
        char parent[PATH_MAX];
        snprintf(parent, sizeof(parent), "%s", a->dir);
        int r = ps_mkdir_p(dirname(parent));
        int n = snprintf(tmp, sizeof(tmp), "%s/.ctrps-export-XXXXXX", parent);
        if (r < 0 || n >= (int)sizeof(tmp) || !mkdtemp(tmp))
            return fail(1, "export-model: a temporary checkpoint directory beside %s: %s", a->dir,
                        strerror(r < 0 ? -r : errno));
        root = tmp;
    }
    char id[PS_CHECKPOINT_ID_MAX];
    uint32_t wait_s = a->wait_s ? (uint32_t)a->wait_s : cfg->checkpoint_wait_s;
    int r = ps_checkpoint_take(cl, cfg, root, wait_s, id, sizeof(id), err, sizeof(err));
    int code = 0;
    if (r < 0) {
        code = fail(1, "export-model: checkpoint: %s", err);
    } else {
        snprintf(ckpt, sizeof(ckpt), "%s/%s", root, id);
        o.checkpoint = ckpt;
        o.source_kind = "cluster";
        r = ps_model_export(&o, err, sizeof(err));
        if (r < 0)
            code = fail(export_code(r), "export-model: %s", err);
        else
            printf("%s\t%s\n", a->dir, root == tmp ? "-" : ckpt);
    }
    if (root == tmp)
        ps_rm_tree(tmp);
    return code;
}

static void gen_usage(FILE *out) {
    ps_gen_options d;
    ps_gen_options_init(&d);
    fprintf(out,
            "usage: ctrps-cli gen --rows N --seed S --format criteo|slots --out FILE [knobs]\n"
            "\n"
            "Write a synthetic click log: Zipf-distributed categorical values with realistic\n"
            "vocabularies, labels drawn from a known logistic model with planted pairwise\n"
            "crosses (criteo) or an item x history co-action (slots). FILE.truth.json gets\n"
            "the Bayes-optimal AUC and logloss of the file (from the true probabilities) and\n"
            "the AUC of the main effects alone.\n"
            "\n"
            "  --rows N           rows to write (default %llu)\n"
            "  --seed S           every parameter and row follows from it (default %llu)\n"
            "  --format F         criteo (Kaggle TSV) | slots ('label slot:value ...')\n"
            "  --out FILE         output path; '-' writes to stdout (no truth file unless\n"
            "                     --truth names one; nothing is kept per row then, so a\n"
            "                     stream of any length runs in constant memory)\n"
            "  --truth FILE       where the truth goes (default FILE.truth.json)\n"
            "  --ctr P            target mean click probability (default %.2f)\n"
            "  --zipf S           Zipf exponent of the categorical values (default %.2f)\n"
            "  --cross-scale X    std of the planted interactions' logit (default %.2f)\n"
            "  --main-scale X     std of the categorical main effects (default %.2f)\n"
            "  --vocab-scale X    multiply every vocabulary size (default %.2f)\n"
            "\n"
            "Drift (off unless --drift is given): time runs in periods of ROWS rows.\n"
            "  --drift ROWS       period length in rows; at every period boundary a share\n"
            "                     of each field's values retires and as many new values\n"
            "                     (new tokens, new main effects) take over their popularity\n"
            "  --drift-churn F    share of each field's values retired per period, head and\n"
            "                     tail alike, in [0, 1] (default %.2f)\n"
            "  --drift-truth F    share of every main effect's and integer coefficient's\n"
            "                     variance that walks to a fresh value each period,\n"
            "                     continuously, in [0, 1] (default %.2f); the planted crosses,\n"
            "                     the bias and the CTR stay fixed\n"
            "Without --drift the output is byte for byte that of earlier versions.\n",
            (unsigned long long)d.rows, (unsigned long long)d.seed, d.ctr, d.zipf_s, d.cross_scale,
            d.main_scale, d.vocab_scale, d.drift_churn, d.drift_truth);
}

static int cmd_gen(int argc, char **argv) {
    static const struct option opts[] = {{"rows", required_argument, NULL, 'r'},
                                         {"seed", required_argument, NULL, 's'},
                                         {"format", required_argument, NULL, 'f'},
                                         {"out", required_argument, NULL, 'o'},
                                         {"ctr", required_argument, NULL, 'c'},
                                         {"zipf", required_argument, NULL, 'z'},
                                         {"cross-scale", required_argument, NULL, 'x'},
                                         {"main-scale", required_argument, NULL, 'm'},
                                         {"vocab-scale", required_argument, NULL, 'v'},
                                         {"truth", required_argument, NULL, 'T'},
                                         {"drift", required_argument, NULL, 'D'},
                                         {"drift-churn", required_argument, NULL, 'C'},
                                         {"drift-truth", required_argument, NULL, 'W'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    ps_gen_options o;
    ps_gen_options_init(&o);
    optind = 1;
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        double *dst = NULL;
        switch (opt) {
        case 'r':
            if (ps_parse_u64(optarg, &o.rows) < 0 || o.rows == 0)
                return fail(2, "--rows: expected a positive integer, got '%s'", optarg);
            break;
        case 's':
            if (ps_parse_u64(optarg, &o.seed) < 0)
                return fail(2, "--seed: expected an unsigned integer, got '%s'", optarg);
            break;
        case 'f':
            if (ps_gen_format_parse(optarg, &o.format) < 0)
                return fail(2, "--format: expected criteo or slots, got '%s'", optarg);
            break;
        case 'o':
            o.out = optarg;
            break;
        case 'c':
            dst = &o.ctr;
            break;
        case 'z':
            dst = &o.zipf_s;
            break;
        case 'x':
            dst = &o.cross_scale;
            break;
        case 'm':
            dst = &o.main_scale;
            break;
        case 'v':
            dst = &o.vocab_scale;
            break;
        case 'T':
            o.truth = optarg;
            break;
        case 'D':
            if (ps_parse_u64(optarg, &o.drift_period) < 0 || o.drift_period == 0)
                return fail(2, "--drift: expected a positive number of rows, got '%s'", optarg);
            break;
        case 'C':
            dst = &o.drift_churn;
            break;
        case 'W':
            dst = &o.drift_truth;
            break;
        case 'h':
            gen_usage(stdout);
            return 0;
        default:
            gen_usage(stderr);
            return 2;
        }
        if (dst && ps_parse_double(optarg, dst) < 0) {
            const char *name = "?";
            for (const struct option *q = opts; q->name; q++)
                if (q->val == opt)
                    name = q->name;
            return fail(2, "--%s: not a number: '%s'", name, optarg);
        }
    }
    if (optind < argc)
        return fail(2, "gen: unexpected argument '%s'", argv[optind]);
    if (!o.out)
        return fail(2, "gen: --out FILE is required");
    char err[1024];
    int r = ps_gen_run(&o, err, sizeof(err));
    if (r == -EINVAL)
        return fail(2, "gen: %s", err);
    if (r < 0)
        return fail(1, "gen: %s", err);
    return 0;
}

/* ---- resharding ---------------------------------------------------------------- */

static void move_progress(void *ctx, const ps_move_progress *p) {
    (void)ctx;
    double rate = p->elapsed_s > 0 ? (double)p->rows / p->elapsed_s : 0;
    if (p->done) {
        printf("moved buckets %u-%u from shard %u to shard %u: %llu rows in %.2f s (%.0f rows/s), "
               "%u catch-up rounds, pause %.1f ms (freeze %.1f, last %llu rows %.1f, maps %.1f), "
               "copy begun again %u times\n",
               p->lo, p->hi - 1, p->from, p->to, (unsigned long long)p->rows, p->elapsed_s, rate,
               p->rounds, p->pause_s * 1e3, p->freeze_s * 1e3,
               (unsigned long long)p->last_round_rows, p->last_round_s * 1e3, p->map_s * 1e3,
               p->restarts);
        fflush(stdout);
        return;
    }
    char eta[64] = "";
    if (!p->rounds && rate > 0 && p->estimated_rows > p->rows)
        snprintf(eta, sizeof(eta), ", ETA %.0f s", (double)(p->estimated_rows - p->rows) / rate);
    char round[32] = "";
    if (p->rounds)
        snprintf(round, sizeof(round), ", catch-up round %u", p->rounds);
    fprintf(stderr,
            "%s: moving buckets %u-%u from shard %u to shard %u: %llu of ~%llu rows copied "
            "(%.0f rows/s%s%s)\n",
            prog, p->lo, p->hi - 1, p->from, p->to, (unsigned long long)p->rows,
            (unsigned long long)p->estimated_rows, rate, eta, round);
}

/* The shard list of the next maps: the config's when it lists more shards
 * than the map (shards are joining), else the map's. */
static char *const *move_shards(const ps_config *cfg, const ps_cluster_map *cur, size_t *ret_n) {
    if (cfg->nshards > cur->nshards) {
        *ret_n = cfg->nshards;
        return cfg->shards;
    }
    *ret_n = cur->nshards;
    return cur->shards;
}

static int cmd_move(ps_client *cl, const ps_config *cfg, int argc, char **argv) {
    static const struct option opts[] = {{"buckets", required_argument, NULL, 'b'},
                                         {"to", required_argument, NULL, 't'},
                                         {"abort", required_argument, NULL, 'a'},
                                         {NULL, 0, NULL, 0}};
    uint64_t lo = 0, hi = 0, to = UINT64_MAX, abort_from = UINT64_MAX;
    bool have_range = false;
    int opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *dash;
        switch (opt) {
        case 'b':
            dash = strchr(optarg, '-');
            if (!dash)
                return fail(2, "move: --buckets A-B, got '%s'", optarg);
            *dash = '\0';
            if (ps_parse_u64(optarg, &lo) < 0 || ps_parse_u64(dash + 1, &hi) < 0 || hi < lo)
                return fail(2, "move: --buckets A-B with A <= B");
            have_range = true;
            break;
        case 't':
            if (ps_parse_u64(optarg, &to) < 0)
                return fail(2, "move: --to N: not a number: '%s'", optarg);
            break;
        case 'a':
            if (ps_parse_u64(optarg, &abort_from) < 0)
                return fail(2, "move: --abort N: not a number: '%s'", optarg);
            break;
        default:
            return 2;
        }
    }
    char err[1024];
    if (abort_from != UINT64_MAX) {
        uint32_t unstaged;
        if (ps_move_abort(cl, (uint32_t)abort_from, &unstaged, err, sizeof(err)) < 0)
            return fail(1, "move --abort: %s", err);
        printf("shard %llu: the moving range is thawed; staged copies removed: %u\n",
               (unsigned long long)abort_from, unstaged);
        return 0;
    }
    if (!have_range || to == UINT64_MAX)
        return fail(2, "move: --buckets A-B and --to N are required");
    ps_cluster_map cur;
    if (ps_move_current_map(cl, cfg->nshards, &cur, err, sizeof(err)) < 0)
        return fail(1, "move: %s", err);
    size_t ns;
    char *const *shards = move_shards(cfg, &cur, &ns);
    int code = 0;
    if (to >= ns || hi >= cur.buckets)
        code = fail(2, "move: shard %llu or bucket %llu is not in the cluster (%zu shards, %u buckets)",
                    (unsigned long long)to, (unsigned long long)hi, ns, cur.buckets);
    else if (ps_move_buckets(cl, &cur, (uint32_t)lo, (uint32_t)hi + 1, (uint32_t)to, shards, ns,
                             move_progress, NULL, err, sizeof(err)) < 0)
        code = fail(1, "move: %s", err);
    else
        printf("map version %llu\n", (unsigned long long)cur.version);
    ps_cluster_map_deinit(&cur);
    return code;
}

static int cmd_reshard(ps_client *cl, const ps_config *cfg) {
    char err[1024];
    ps_cluster_map cur;
    /* Ask every shard the new config lists that the map may know. */
    if (ps_move_current_map(cl, cfg->nshards, &cur, err, sizeof(err)) < 0)
        return fail(1, "reshard: %s", err);
    size_t ns;
    char *const *shards = move_shards(cfg, &cur, &ns);
    /* shards may point into cur, which the moves replace: keep a copy. */
    ps_cluster_map list;
    int code = 0;
    if (ps_cluster_map_copy(&cur, &list) < 0) {
        ps_cluster_map_deinit(&cur);
        return fail(1, "reshard: out of memory");
    }
    if (shards == cur.shards)
        shards = list.shards;
    if (ps_move_reshard(cl, &cur, shards, ns, cfg->nshards, move_progress, NULL, err, sizeof(err)) < 0)
        code = fail(1, "reshard: %s", err);
    else
        printf("map version %llu: %u buckets evenly over %u shards\n", (unsigned long long)cur.version,
               cur.buckets, cfg->nshards);
    ps_cluster_map_deinit(&list);
    ps_cluster_map_deinit(&cur);
    return code;
}

int main(int argc, char **argv) {
    ps_client_keep_freed_memory(); /* a move relays ~1 MB pages */
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"timeout", required_argument, NULL, 't'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"version", no_argument, NULL, 'V'},
                                         {NULL, 0, NULL, 0}};
    const char *config_path = NULL;
    uint64_t timeout_ms = 10000;
    int opt;
    ps_log_init(prog, PS_LOG_WARN);
    /* '+': stop at the command; its options are parsed by the command. */
    while ((opt = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 't':
            if (ps_parse_u64(optarg, &timeout_ms) < 0 || timeout_ms == 0 || timeout_ms > 86400000)
                return fail(2, "--timeout: expected milliseconds in 1..86400000, got '%s'", optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("%s %s\n", prog, ps_version());
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    int cargc = argc - optind;
    char **cargv = argv + optind;
    if (!strcmp(cmd, "gen"))
        return cmd_gen(cargc, cargv);
    ckpt_args ca = {0};
    model_args ma = {0};
    bool model = !strcmp(cmd, "export-model");
    if (!strcmp(cmd, "checkpoint")) {
        int code = parse_checkpoint(cargc, cargv, &ca);
        if (code >= 0)
            return code;
    } else if (model) {
        int code = parse_export_model(cargc, cargv, &ma);
        if (code != 0)
            return code;
    } else if (strcmp(cmd, "lookup") && strcmp(cmd, "pull") && strcmp(cmd, "push") &&
               strcmp(cmd, "export") && strcmp(cmd, "stats") && strcmp(cmd, "move") &&
               strcmp(cmd, "reshard")) {
        return fail(2, "unknown command '%s' (see --help)", cmd);
    }
    if (!config_path)
        return fail(2, "%s needs --config FILE", cmd);
    char err[1024];
    ps_config *cfg;
    /* export-model describes the model: the worker's sections must parse. */
    int r = ps_config_load(config_path, model ? &ps_worker_config_ext : NULL, &cfg, err, sizeof(err));
    if (r < 0)
        return fail(2, "%s", err);
    if (model && ma.checkpoint) {
        int code = cmd_export_model(NULL, cfg, &ma);
        ps_config_free(cfg);
        return code;
    }
    ps_client *cl;
    ps_client_options co = {.cfg = cfg, .name = prog, .timeout_ms = (uint32_t)timeout_ms};
    r = ps_client_new(&co, &cl, err, sizeof(err));
    if (r < 0) {
        ps_config_free(cfg);
        return fail(1, "%s", err);
    }
    int code;
    if (!strcmp(cmd, "lookup"))
        code = cmd_lookup(cl, cfg, cargc, cargv, false);
    else if (!strcmp(cmd, "pull"))
        code = cmd_lookup(cl, cfg, cargc, cargv, true);
    else if (!strcmp(cmd, "push"))
        code = cmd_push(cl, cfg, cargc, cargv);
    else if (!strcmp(cmd, "export"))
        code = cmd_export(cl, cfg, cargc, cargv);
    else if (!strcmp(cmd, "checkpoint"))
        code = cmd_checkpoint(cl, cfg, &ca);
    else if (model)
        code = cmd_export_model(cl, cfg, &ma);
    else if (!strcmp(cmd, "move"))
        code = cmd_move(cl, cfg, cargc, cargv);
    else if (!strcmp(cmd, "reshard"))
        code = cmd_reshard(cl, cfg);
    else
        code = cmd_stats(cl, cfg, cargc, cargv);
    if (fflush(stdout) != 0 && code == 0)
        code = fail(1, "writing output: %s", strerror(errno));
    ps_client_free(cl);
    ps_config_free(cfg);
    return code;
}
