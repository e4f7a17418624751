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

#include "checkpoint.h"
#include "config.h"
#include "error.h"
#include "kafka.h"
#include "live.h"
#include "log.h"
#include "metrics.h"
#include "nn.h"
#include "parse.h"
#include "predict.h"
#include "train.h"
#include "version.h"
#include "wconfig.h"

static volatile sig_atomic_t stop_flag;
/* The --input arguments (pointers into argv). File-static so that the
 * early exits (fail()) leave it reachable rather than leaked; main frees it
 * on its way out of a run. */
static const char **inputs;
/* Where the JSON result line goes: stdout, or stderr when --predict writes
 * its lines to stdout. */
static FILE *result_out;

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: ctrps-worker --config FILE --input PATH [--input PATH ...] [options]\n"
            "       ctrps-worker --config FILE --input PATH ... --predict OUT [options]\n"
            "\n"
            "Train the model of [model] in FILE on click logs against the cluster's shards:\n"
            "pull the rows each minibatch needs, run the dense model, push the gradients.\n"
            "Every example is scored before it is trained on (progressive validation).\n"
            "\n"
            "With --predict, score every input line with the trained model instead, without\n"
            "training and without creating rows (Lookup: a key never trained scores with a\n"
            "zero row), and write one line per input line to OUT (- for stdout; the JSON\n"
            "result line then goes to stderr), in input order: the probability (%%.9g), or\n"
            "nan for a line that does not parse (malformed, blank, too long; counted in\n"
            "\"malformed\"); a CSV header line gets none. With [input] id_column = N the\n"
            "N-th column's raw text and a tab come first. Labelled input also gets \"auc\",\n"
            "\"logloss\" and \"calibration\" of the scores in the result line. Output is\n"
            "flushed after every batch (--follow); with --num-workers, each worker scores\n"
            "its share of the lines and writes its own OUT.\n"
            "\n"
            "  --config FILE        cluster, tables, [input] and [model] (INI); required\n"
            "  --input PATH         a file, a glob (quote it), a directory (its files in name\n"
            "                       order) or - for stdin; repeat for more; extra arguments\n"
            "                       after the options are inputs too\n"
            "  --input kafka://HOST:PORT[,HOST:PORT...]/TOPIC\n"
            "                       a Kafka topic instead (the only input): one message is one\n"
            "                       line; worker I of N reads partitions I, I+N, ...; without\n"
            "                       --follow it reads up to the end the topic had at start.\n"
            "                       It starts at --resume's position, else at the offsets\n"
            "                       committed for [input] kafka_group (default ctrps), else at\n"
            "                       the earliest; offsets are committed only once the shards\n"
            "                       acknowledged the pushes of every message before them.\n"
            "                       [input] kafka_properties = key=value, ... passes librdkafka\n"
            "                       consumer properties\n"
            "  --follow             keep reading appended lines and new files (tail -F) until\n"
            "                       SIGTERM, then finish the batches in flight and exit\n"
            "  --format F           criteo | csv | libsvm | slots (overrides [input] format)\n"
            "  --predict OUT        score the input into OUT instead of training (see above)\n"
            "  --unlabelled         the input has no label column (sets [input] labelled =\n"
            "                       false; criteo and csv; with --predict)\n"
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
            "  --metrics-listen HOST:PORT\n"
            "                       serve /metrics, /healthz and /readyz (ready: training\n"
            "                       and connected to every shard) there; port 0 picks a\n"
            "                       free one, logged as \"metrics on http://HOST:PORT/metrics\"\n"
            "  --log-level LEVEL    debug | info | warn | error (default info)\n"
            "  --help               this text\n"
            "  --version            print the version and exit\n"
            "\n"
            "At a checkpoint barrier (ctrps-cli checkpoint) the worker pauses once its\n"
            "pushes are acknowledged, reports its input position, and continues after\n"
            "(a --predict run pushes nothing and goes on).\n"
            "\n"
            "Training writes progress lines to stderr every [worker] progress_interval_s\n"
            "seconds; the final result is one JSON line on stdout, on every exit but\n"
            "--help and --version:\n"
            "  {\"examples\":..,\"examples_per_sec\":..,\"auc\":..,\"logloss\":..,\"calibration\":..,\n"
            "   \"holdout_auc\":..,\"holdout_logloss\":.., ...[,\"error\":\"message\"]}\n"
            "(--predict adds \"lines\", the output lines written, after \"examples\").\n"
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
    ps_train_result_json(&none, msg, result_out ? result_out : stdout);
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
        /* The kernels wanted, and those OpenBLAS may pick itself that are
         * as good. An AMD core (Zen 4) runs a 512-bit instruction as two
         * 256-bit halves: OpenBLAS picks its Cooperlake kernels there, and
         * its AVX2 (Haswell) ones ran the DCN-V2 batch 3-4% faster
         * (bench/README.md, "Training"). */
        const char *want = NULL, *also[3] = {NULL, NULL, NULL};
#if defined(__x86_64__)
        __builtin_cpu_init();
        bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        if (avx2 && __builtin_cpu_is("amd")) {
            want = "Haswell";
            also[0] = "Zen"; /* OpenBLAS's name for the same kernels on AMD */
        } else if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
            want = "SkylakeX";
            also[0] = "Cooperlake";
            also[1] = "SapphireRapids";
        } else if (avx2) {
            want = "Haswell";
        }
#endif
        const char *have = ps_nn_blas_core();
        bool ok = !want || strcasecmp(have, want) == 0;
        for (int i = 0; !ok && i < 3 && also[i]; i++)
            ok = strcasecmp(have, also[i]) == 0;
        if (!ok) {
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
        {"resume", required_argument, NULL, 'R'},      {"predict", required_argument, NULL, 'P'},
        {"unlabelled", no_argument, NULL, 'U'},        {"metrics-listen", required_argument, NULL, 'M'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},              {NULL, 0, NULL, 0}};
    const char *config_path = NULL, *format = NULL, *predict = NULL, *metrics_listen = NULL;
    bool unlabelled = false;
    result_out = stdout;
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
        case 'M':
            metrics_listen = optarg;
            break;
        case 'P':
            predict = optarg;
            if (!strcmp(predict, "-"))
                result_out = stderr;
            break;
        case 'U':
            unlabelled = true;
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
    bool uses_stdin = false, uses_kafka = false;
    for (size_t i = 0; i < ninputs; i++) {
        uses_stdin |= !strcmp(inputs[i], "-");
        uses_kafka |= ps_kafka_is_url(inputs[i]);
    }
    if (uses_stdin && to.passes > 1) {
        return fail(2, "--passes > 1 cannot read stdin twice");
    }
    if (predict && (to.holdout || to.resume || to.passes > 1))
        return fail(2, "--predict does not go with --holdout, --resume or --passes");
    if (unlabelled && !predict)
        return fail(2, "--unlabelled needs --predict (training needs labels)");
    if (uses_kafka) {
        char why[512];
        if (ninputs > 1)
            return fail(2, "--input kafka://...: a Kafka topic must be the only input");
        if (ps_kafka_check_url(inputs[0], why, sizeof(why)) < 0)
            return fail(2, "--input %s", why);
        if (to.passes > 1)
            return fail(2, "--passes > 1 cannot read a Kafka topic twice (a pass is the topic up to "
                           "its end at start; run again for another)");
    }
    ps_log_init("ctrps-worker", level);

    char err[1024];
    ps_config *cfg;
    int r = ps_config_load(config_path, &ps_worker_config_ext, &cfg, err, sizeof(err));
    if (r < 0) {
        return fail(2, "%s", err);
    }
    ps_worker_config *w = cfg->worker;
    if (format || unlabelled) {
        char reason[256];
        if ((format && ps_input_config_set(&w->input, "format", format, reason, sizeof(reason)) < 0) ||
            (unlabelled && ps_input_config_set(&w->input, "labelled", "false", reason, sizeof(reason)) < 0) ||
            ps_input_config_check(&w->input, reason, sizeof(reason)) < 0) {
            ps_config_free(cfg);
            return fail(2, "%s%s%s: %s", format ? "--format " : "", format ? format : "",
                        unlabelled ? " --unlabelled" : "", reason);
        }
    }
    FILE *pout = NULL;
    if (predict) {
        pout = strcmp(predict, "-") ? fopen(predict, "w") : stdout;
        if (!pout) {
            int e = errno;
            ps_config_free(cfg);
            return fail(1, "--predict %s: %s", predict, strerror(e));
        }
    }
    ps_nn_blas_one_thread();
    ps_info("model %s, input %s, BLAS kernels %s, worker %u of %u%s%s",
            ps_model_type_name(w->model.type), ps_input_format_name(w->input.format),
            ps_nn_blas_core(), to.worker_index, to.num_workers, to.follow ? ", following" : "",
            predict ? ", predicting" : "");

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* The endpoint runs on its own thread and reads only what live holds
     * (atomics, or fields under its short lock): training never waits on it. */
    static ps_train_live live;
    char wname[64];
    ps_checkpoint_worker_name(wname, sizeof(wname), to.worker_index, to.num_workers);
    ps_train_live_init(&live, cfg->nshards, wname);
    ps_metrics *metrics = NULL;
    if (metrics_listen) {
        r = ps_metrics_start(metrics_listen, &metrics, err, sizeof(err));
        if (r < 0) {
            ps_config_free(cfg);
            ps_train_live_deinit(&live);
            free(inputs);
            return fail(2, "--metrics-listen: %s", err);
        }
        ps_metrics_set_render(metrics, ps_train_live_render, &live);
        ps_metrics_set_ready_fn(metrics, ps_train_live_ready, &live);
        char mhost[256];
        int mport;
        ps_parse_hostport(metrics_listen, mhost, sizeof(mhost), &mport);
        ps_info("metrics on http://%s:%d/metrics", mhost, ps_metrics_port(metrics));
        to.live = &live;
    }
    to.cfg = cfg;
    to.inputs = inputs;
    to.ninputs = ninputs;
    to.stop = &stop_flag;
    ps_train_result res;
    err[0] = 0;
    if (predict) {
        r = ps_predict_run(&to, pout, &res, err, sizeof(err));
        if (pout != stdout && fclose(pout) != 0 && r == 0) {
            snprintf(err, sizeof(err), "--predict %s: %s", predict, strerror(errno));
            r = -EIO;
        }
    } else {
        r = ps_train_run(&to, &res, err, sizeof(err));
    }
    int status = 0;
    if (r < 0) {
        const char *msg = err[0] ? err : ps_strerror(r);
        ps_error("%s", msg);
        status = r == PS_ECONFIG ? 2 : 1;
        ps_train_result_json(&res, msg, result_out);
    } else {
        if (res.malformed)
            ps_warn("%s %llu malformed lines", predict ? "wrote nan for" : "skipped",
                    (unsigned long long)res.malformed);
        ps_train_result_json(&res, NULL, result_out);
    }
    ps_metrics_stop(metrics);
    ps_train_live_deinit(&live);
    ps_config_free(cfg);
    free(inputs);
    return status;
}
