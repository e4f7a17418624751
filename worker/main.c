/* ctrps-worker: streaming online training against a ctrps cluster. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "log.h"
#include "nn.h"
#include "parse.h"
#include "train.h"
#include "version.h"
#include "wconfig.h"

void openblas_set_num_threads(int num_threads);

static volatile sig_atomic_t stop_flag;
/* The --input arguments (pointers into argv). File-static so that the
 * early exits (fail()) leave it reachable rather than leaked; main frees it
 * on its way out of a run. */
static const char **inputs;

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: ctrps-worker --config FILE --input PATH [--input PATH ...] [options]\n"
            "\n"
            "Train the model of [model] in FILE on click logs against the cluster's shards:\n"
            "pull the rows each minibatch needs, run the dense model, push the gradients.\n"
            "Every example is scored before it is trained on (progressive validation).\n"
            "\n"
            "  --config FILE        cluster, tables, [input] and [model] (INI); required\n"
            "  --input PATH         a file, a glob (quote it), a directory (its files in name\n"
            "                       order) or - for stdin; repeat for more; extra arguments\n"
            "                       after the options are inputs too\n"
            "  --follow             keep reading appended lines and new files (tail -F) until\n"
            "                       SIGTERM, then finish the batches in flight and exit\n"
            "  --format F           criteo | csv | libsvm | slots (overrides [input] format)\n"
            "  --holdout FILE       evaluated without training at each progress report and at\n"
            "                       the end (rows read with Lookup: nothing is created)\n"
            "  --worker-index I     this worker's share of the input: lines I, I+N, ...\n"
            "  --num-workers N      (default 0 of 1)\n"
            "  --max-examples N     stop after N examples (default: all)\n"
            "  --passes P           read the input P times (default 1; not with stdin)\n"
            "  --resume D           continue from a cluster checkpoint (D, or the newest one\n"
            "                       under D): this worker's input position in its manifest\n"
            "                       (same --input arguments, same --worker-index/--num-workers);\n"
            "                       the shards must have been restored from it\n"
            "  --log-level LEVEL    debug | info | warn | error (default info)\n"
            "  --help               this text\n"
            "  --version            print the version and exit\n"
            "\n"
            "At a checkpoint barrier (ctrps-cli checkpoint) the worker pauses once its\n"
            "pushes are acknowledged, reports its input position, and continues after.\n"
            "\n"
            "Progress lines go to stderr every [worker] progress_interval_s seconds; the\n"
            "final result is one JSON line on stdout, on every exit but --help, --version:\n"
            "  {\"examples\":..,\"examples_per_sec\":..,\"auc\":..,\"logloss\":..,\"calibration\":..,\n"
            "   \"holdout_auc\":..,\"holdout_logloss\":.., ...[,\"error\":\"message\"]}\n"
            "A shard that is unreachable or read-only is waited for, with a warning naming\n"
            "it every few seconds, up to [worker] outage_timeout_s (default 600).\n"
            "Exit status: 0 on success, 1 on a runtime error (a shard unavailable past\n"
            "outage_timeout_s, unreadable input, an input in which no line is valid), 2 on\n"
            "bad usage or config; \"error\" holds the message of either.\n");
}

/* An error before training: the message on stderr, and on stdout the JSON
 * result line every exit but --help ends with, nothing done, "error" set. */
static int fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int status, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "ctrps-worker: %s\n", msg);
    ps_train_result none;
    ps_train_result_init(&none);
    ps_train_result_json(&none, msg, stdout);
    return status;
}

/* Debian's OpenBLAS 0.3.21 does not recognise every CPU with AVX-512 or AVX2
 * and then falls back to its SSE3 kernels, a fifth of the speed here
 * (measured in bench/README.md). It reads OPENBLAS_CORETYPE only when it is
 * loaded, so set it and re-execute once. OMP_WAIT_POLICY=PASSIVE stops the
 * OpenMP threads from spinning between calls on cores the shards need. */
static void fix_blas_environment(char **argv) {
    if (getenv("CTRPS_WORKER_REEXEC"))
        return;
    bool again = false;
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
        again = true;
    }
    if (!getenv("OPENBLAS_CORETYPE")) {
        const char *want = NULL;
#if defined(__x86_64__)
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
            want = "SkylakeX";
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            want = "Haswell";
#endif
        const char *have = ps_nn_blas_core();
        if (want && strcasecmp(have, want) != 0 && strcasecmp(have, "Cooperlake") != 0 &&
            strcasecmp(have, "SapphireRapids") != 0 && strcasecmp(have, "Zen") != 0) {
            setenv("OPENBLAS_CORETYPE", want, 1);
            again = true;
        }
    }
    if (again) {
        setenv("CTRPS_WORKER_REEXEC", "1", 1);
        execv("/proc/self/exe", argv);
        /* If that fails, run as we are: slower, still correct. */
    }
}

int main(int argc, char **argv) {
    fix_blas_environment(argv);
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},      {"input", required_argument, NULL, 'i'},
        {"follow", no_argument, NULL, 'F'},            {"format", required_argument, NULL, 'f'},
        {"holdout", required_argument, NULL, 'H'},     {"worker-index", required_argument, NULL, 'w'},
        {"num-workers", required_argument, NULL, 'n'}, {"max-examples", required_argument, NULL, 'm'},
        {"passes", required_argument, NULL, 'p'},      {"log-level", required_argument, NULL, 'v'},
        {"resume", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},              {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0}};
    const char *config_path = NULL, *format = NULL;
    inputs = calloc((size_t)argc + 1, sizeof(char *));
    if (!inputs)
        return fail(1, "out of memory");
    size_t ninputs = 0;
    ps_train_options to = {.num_workers = 1, .passes = 1, .progress = stderr};
    ps_log_level level = PS_LOG_INFO;
    ps_log_init("ctrps-worker", level);
    int opt;
    uint64_t v;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'i':
            inputs[ninputs++] = optarg;
            break;
        case 'F':
            to.follow = true;
            break;
        case 'f':
            format = optarg;
            break;
        case 'H':
            to.holdout = optarg;
            break;
        case 'R':
            to.resume = optarg;
            break;
        case 'w':
        case 'n':
        case 'm':
        case 'p':
            if (ps_parse_u64(optarg, &v) < 0 || (opt != 'm' && opt != 'w' && v == 0) ||
                (opt != 'm' && v > 1000000)) {
                return fail(2, "--%s: bad value '%s'",
                            opt == 'w' ? "worker-index" : opt == 'n' ? "num-workers"
                                                       : opt == 'm' ? "max-examples" : "passes",
                            optarg);
            }
            if (opt == 'w')
                to.worker_index = (uint32_t)v;
            else if (opt == 'n')
                to.num_workers = (uint32_t)v;
            else if (opt == 'm')
                to.max_examples = v;
            else
                to.passes = (uint32_t)v;
            break;
        case 'v':
            if (ps_log_level_parse(optarg, &level) < 0)
                return fail(2, "--log-level: expected debug, info, warn or error");
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("ctrps-worker %s\n", ps_version());
            return 0;
        default:
            usage(stderr);
            return fail(2, "bad usage (see --help)");
        }
    }
    while (optind < argc)
        inputs[ninputs++] = argv[optind++];
    if (!config_path || ninputs == 0) {
        return fail(2, "--config and at least one --input are required (see --help)");
    }
    if (to.worker_index >= to.num_workers) {
        return fail(2, "--worker-index %u must be below --num-workers %u", to.worker_index,
                    to.num_workers);
    }
    bool uses_stdin = false;
    for (size_t i = 0; i < ninputs; i++)
        uses_stdin |= !strcmp(inputs[i], "-");
    if (uses_stdin && to.passes > 1) {
        return fail(2, "--passes > 1 cannot read stdin twice");
    }
    ps_log_init("ctrps-worker", level);

    char err[1024];
    ps_config *cfg;
    int r = ps_config_load(config_path, &ps_worker_config_ext, &cfg, err, sizeof(err));
    if (r < 0) {
        return fail(2, "%s", err);
    }
    ps_worker_config *w = cfg->worker;
    if (format) {
        char reason[256];
        if (ps_input_config_set(&w->input, "format", format, reason, sizeof(reason)) < 0 ||
            ps_input_config_check(&w->input, reason, sizeof(reason)) < 0) {
            ps_config_free(cfg);
            return fail(2, "--format %s: %s", format, reason);
        }
    }
    openblas_set_num_threads(1);
    ps_info("model %s, input %s, BLAS kernels %s, worker %u of %u%s",
            ps_model_type_name(w->model.type), ps_input_format_name(w->input.format),
            ps_nn_blas_core(), to.worker_index, to.num_workers, to.follow ? ", following" : "");

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    to.cfg = cfg;
    to.inputs = inputs;
    to.ninputs = ninputs;
    to.stop = &stop_flag;
    ps_train_result res;
    err[0] = 0;
    r = ps_train_run(&to, &res, err, sizeof(err));
    int status = 0;
    if (r < 0) {
        const char *msg = err[0] ? err : ps_strerror(r);
        ps_error("%s", msg);
        status = r == PS_ECONFIG ? 2 : 1;
        ps_train_result_json(&res, msg, stdout);
    } else {
        if (res.malformed)
            ps_warn("skipped %llu malformed lines", (unsigned long long)res.malformed);
        ps_train_result_json(&res, NULL, stdout);
    }
    ps_config_free(cfg);
    free(inputs);
    return status;
}
