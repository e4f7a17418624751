#!/usr/bin/env python3
"""Render ctrps's Kubernetes manifests from one values file.

    python3 deploy/k8s/render.py [--values FILE] [--out DIR] [--check]

Reads deploy/k8s/values.ini (and the model config it names) and writes
DIR/cluster.yaml (Namespace, ConfigMap, headless Service, StatefulSet of
shards, PodDisruptionBudget), DIR/worker-deployment.yaml (streaming workers)
and DIR/worker-job.yaml (an indexed Job of workers over a fixed input).
--check writes nothing and exits 1 when DIR differs from what would be
rendered. Every name, port and count in the output is derived here from the
values, so they agree by construction; tests/deploy/k8s_check.py verifies it.

Standard library only: the YAML is emitted by the small writer below (block
style, strings quoted where a plain scalar could be misread).
"""
import argparse
import configparser
import hashlib
import json
import math
import os
import re
import shlex
import sys

# Fixed by the container image (deploy/Containerfile).
IMAGE_UID = 10001
CONFIG_DIR = "/etc/ctrps"
CONFIG_NAME = "ctrps.ini"
DATA_DIR = "/var/lib/ctrps"
SECRET_DIR = "/run/secrets/ctrps"
INPUT_DIR = "/input"
# SIGTERM lets a worker finish its batches in flight: each waits for its
# acknowledgements at most [worker] timeout_ms (60 s by default), plus margin.
WORKER_GRACE_S = 90

OUTPUT_FILES = ("cluster.yaml", "worker-deployment.yaml", "worker-job.yaml")

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")


class ValuesError(Exception):
    pass


# ---- values ------------------------------------------------------------------

def _get(cp, section, key, kind=str, minimum=None, maximum=None, allow_empty=False):
    if not cp.has_option(section, key):
        raise ValuesError(f"[{section}] {key}: missing")
    raw = cp.get(section, key).strip()
    if raw == "" and allow_empty:
        return ""
    if kind is int:
        try:
            value = int(raw)
        except ValueError:
            raise ValuesError(f"[{section}] {key}: expected an integer, got '{raw}'") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValuesError(f"[{section}] {key}: {value} is outside {minimum}..{maximum}")
        return value
    if raw == "":
        raise ValuesError(f"[{section}] {key}: empty")
    return raw


def load_values(path):
    """The values file as a flat dict, validated; raises ValuesError."""
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    with open(path, encoding="utf-8") as f:
        cp.read_file(f)
    v = {
        "name": _get(cp, "cluster", "name"),
        "namespace": _get(cp, "cluster", "namespace"),
        "cluster_domain": _get(cp, "cluster", "cluster_domain"),
        "image": _get(cp, "cluster", "image"),
        "image_pull_policy": _get(cp, "cluster", "image_pull_policy"),
        "config": _get(cp, "cluster", "config"),
        "auth_secret": _get(cp, "cluster", "auth_secret"),
        "auth_secret_key": _get(cp, "cluster", "auth_secret_key"),
        "shards": _get(cp, "shards", "count", int, 1, 4096),
        "rpc_port": _get(cp, "shards", "rpc_port", int, 1, 65535),
        "shard_metrics_port": _get(cp, "shards", "metrics_port", int, 1, 65535),
        "memory_mb": _get(cp, "shards", "memory_mb", int, 1, 1 << 24),
        "shard_cpu_request": _get(cp, "shards", "cpu_request"),
        "shard_memory_request": _get(cp, "shards", "memory_request"),
        "shard_memory_limit": _get(cp, "shards", "memory_limit"),
        "storage_size": _get(cp, "shards", "storage_size"),
        "storage_class": _get(cp, "shards", "storage_class", allow_empty=True),
        "writeback_mib_per_s": _get(cp, "shards", "writeback_mib_per_s", int, 1, 1 << 20),
        "workers": _get(cp, "workers", "replicas", int, 0, 1024),
        "worker_metrics_port": _get(cp, "workers", "metrics_port", int, 1, 65535),
        "worker_cpu_request": _get(cp, "workers", "cpu_request"),
        "worker_memory_request": _get(cp, "workers", "memory_request"),
        "worker_memory_limit": _get(cp, "workers", "memory_limit"),
        "input_claim": _get(cp, "workers", "input_claim"),
        "input": _get(cp, "workers", "input"),
        "job_completions": _get(cp, "workers", "job_completions", int, 1, 100000),
    }
    # StatefulSet pods get a controller-revision-hash label of NAME-<hash>
    # (<= 63 characters), so the name must leave room for it.
    for key in ("name", "namespace", "auth_secret", "input_claim"):
        if not DNS_LABEL.match(v[key]) or len(v[key]) > 52:
            raise ValuesError(f"{key} '{v[key]}': expected a DNS label of at most 52 characters")
    if len({v["rpc_port"], v["shard_metrics_port"]}) != 2:
        raise ValuesError("[shards] rpc_port and metrics_port must differ")
    for key in ("shard_cpu_request", "shard_memory_request", "shard_memory_limit", "storage_size",
                "worker_cpu_request", "worker_memory_request", "worker_memory_limit"):
        if not QUANTITY.match(v[key]):
            raise ValuesError(f"{key} '{v[key]}': not a Kubernetes quantity")
    if v["image_pull_policy"] not in ("Always", "IfNotPresent", "Never"):
        raise ValuesError(f"image_pull_policy '{v['image_pull_policy']}': Always, IfNotPresent or Never")
    if not (v["input"] == INPUT_DIR or v["input"].startswith(INPUT_DIR + "/")):
        raise ValuesError(f"[workers] input '{v['input']}': must be under {INPUT_DIR}, where input_claim is mounted")
    v["config_path"] = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), v["config"]))
    return v


# ---- derived values: the single place each is computed -----------------------

def shard_addresses(v):
    """[cluster] shards: each pod's stable DNS name behind the headless Service."""
    return [f"{v['name']}-{i}.{v['name']}.{v['namespace']}.svc.{v['cluster_domain']}:{v['rpc_port']}"
            for i in range(v["shards"])]


def shard_grace_seconds(v):
    """A tier entirely dirty written back at the measured rate, 3x, + 30 s."""
    seconds = 30 + 3 * v["memory_mb"] / v["writeback_mib_per_s"]
    return int(math.ceil(seconds / 10.0)) * 10


def config_map_name(v):
    return f"{v['name']}-config"


def secret_file(v):
    return f"{SECRET_DIR}/{v['auth_secret_key']}"


# ---- the INI in the ConfigMap ----------------------------------------------

SECTION = re.compile(r"^\s*\[([^\]]+)\]\s*(?:[;#].*)?$")
KEY = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*=")


def set_ini_keys(text, settings):
    """Return text with settings {section: {key: value}} applied line by line.

    The first line of a key is replaced and its repeats removed; a missing key
    goes after the last line of its section, a missing section at the end.
    Comments and repeated keys of other entries (slots = ...) are kept, which
    configparser could not do."""
    lines = text.splitlines()
    out = []
    section = None
    done = set()
    pending = {s: dict(kv) for s, kv in settings.items()}

    def flush_section():
        if section in pending:
            missing = [(k, val) for k, val in pending[section].items() if (section, k) not in done]
            while out and out[-1].strip() == "":
                out.pop()
            out.extend(f"{k} = {val}" for k, val in missing)
            out.append("")
            for k, _ in missing:
                done.add((section, k))

    for line in lines:
        m = SECTION.match(line)
        if m:
            flush_section()
            section = m.group(1).strip()
            out.append(line)
            continue
        k = KEY.match(line)
        if k and section in pending and k.group(1) in pending[section]:
            key = k.group(1)
            if (section, key) not in done:
                out.append(f"{key} = {pending[section][key]}")
                done.add((section, key))
            continue
        out.append(line)
    flush_section()
    for s, kv in pending.items():
        missing = [(k, val) for k, val in kv.items() if (s, k) not in done]
        if missing:
            while out and out[-1].strip() == "":
                out.pop()
            out.extend(["", f"[{s}]"] + [f"{k} = {val}" for k, val in missing])
    while out and out[-1].strip() == "":
        out.pop()
    return "\n".join(out) + "\n"


def render_ini(v):
    with open(v["config_path"], encoding="utf-8") as f:
        model = f.read()
    body = set_ini_keys(model, {
        "cluster": {"shards": ", ".join(shard_addresses(v))},
        "server": {
            "bind": "0.0.0.0",
            "data_dir": DATA_DIR,
            "memory_mb": str(v["memory_mb"]),
            "metrics_listen": f"0.0.0.0:{v['shard_metrics_port']}",
            "auth_secret_file": secret_file(v),
        },
    })
    header = (f"; Rendered by deploy/k8s/render.py from values.ini and {v['config']}:\n"
              "; [cluster] shards and the [server] keys come from values.ini.\n")
    return header + body


# ---- the objects -------------------------------------------------------------

def labels(v, component):
    return {
        "app.kubernetes.io/name": "ctrps",
        "app.kubernetes.io/instance": v["name"],
        "app.kubernetes.io/component": component,
    }


def pod_annotations(metrics_port, ini):
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics_port),
        "prometheus.io/path": "/metrics",
        # A changed config changes the pod template, so the pods roll.
        "checksum/config": hashlib.sha256(ini.encode()).hexdigest(),
    }


def pod_security():
    return {
        "runAsNonRoot": True,
        "runAsUser": IMAGE_UID,
        "runAsGroup": IMAGE_UID,
        # Volumes (the PVC, the Secret) become group-accessible to the image's user.
        "fsGroup": IMAGE_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security():
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def resources(cpu, memory, limit):
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": limit}}


def http_probe(path, period, failures, initial=0):
    probe = {"httpGet": {"path": path, "port": "metrics"}}
    if initial:
        probe["initialDelaySeconds"] = initial
    probe.update({"periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures})
    return probe


def common_mounts():
    return [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "auth", "mountPath": SECRET_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]


def common_volumes(v):
    return [
        {"name": "config", "configMap": {"name": config_map_name(v)}},
        {"name": "auth", "secret": {
            "secretName": v["auth_secret"],
            "items": [{"key": v["auth_secret_key"], "path": v["auth_secret_key"]}],
            "defaultMode": 0o440,
        }},
        {"name": "tmp", "emptyDir": {}},
    ]


def namespace(v):
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": v["namespace"], "labels": {"app.kubernetes.io/name": "ctrps"}}}


def config_map(v, ini):
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": config_map_name(v), "namespace": v["namespace"],
                         "labels": labels(v, "config")},
            "data": {CONFIG_NAME: ini}}


def headless_service(v):
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": v["name"], "namespace": v["namespace"], "labels": labels(v, "shard")},
        "spec": {
            "clusterIP": "None",
            # Shards and workers resolve every shard's name, including shards
            # still recovering: DNS records must not wait for readiness.
            "publishNotReadyAddresses": True,
            "selector": labels(v, "shard"),
            "ports": [
                {"name": "rpc", "port": v["rpc_port"], "targetPort": "rpc", "protocol": "TCP"},
                {"name": "metrics", "port": v["shard_metrics_port"], "targetPort": "metrics",
                 "protocol": "TCP"},
            ],
        },
    }


def stateful_set(v, ini):
    # The shard index is the pod's ordinal: NAME-3 serves [cluster] shards[3].
    start = (f'exec ctrps-server --config {CONFIG_DIR}/{CONFIG_NAME} --shard "${{POD_NAME##*-}}"')
    claim = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": v["storage_size"]}}}
    if v["storage_class"]:
        claim["storageClassName"] = v["storage_class"]
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": v["name"], "namespace": v["namespace"], "labels": labels(v, "shard")},
        "spec": {
            "serviceName": v["name"],
            "replicas": v["shards"],
            # Shards do not depend on each other to start; all of them are
            # needed before any worker trains.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": labels(v, "shard")},
            "template": {
                "metadata": {"labels": labels(v, "shard"),
                             "annotations": pod_annotations(v["shard_metrics_port"], ini)},
                "spec": {
                    # SIGTERM starts the final write-back of the memory tier.
                    "terminationGracePeriodSeconds": shard_grace_seconds(v),
                    "securityContext": pod_security(),
                    "containers": [{
                        "name": "shard",
                        "image": v["image"],
                        "imagePullPolicy": v["image_pull_policy"],
                        "command": ["/bin/sh", "-c", start],
                        "env": [{"name": "POD_NAME",
                                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [
                            {"name": "rpc", "containerPort": v["rpc_port"], "protocol": "TCP"},
                            {"name": "metrics", "containerPort": v["shard_metrics_port"], "protocol": "TCP"},
                        ],
                        # Ready once recovery (push-log replay) is done and the
                        # shard serves; alive as long as the process answers.
                        "readinessProbe": http_probe("/readyz", 5, 3),
                        "livenessProbe": http_probe("/healthz", 10, 6, initial=10),
                        "resources": resources(v["shard_cpu_request"], v["shard_memory_request"],
                                               v["shard_memory_limit"]),
                        "securityContext": container_security(),
                        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}] + common_mounts(),
                    }],
                    "volumes": common_volumes(v),
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": labels(v, "shard")},
                "spec": claim,
            }],
        },
    }


def disruption_budget(v):
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": v["name"], "namespace": v["namespace"], "labels": labels(v, "shard")},
        # Drains take one shard at a time, like a rolling restart.
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(v, "shard")}},
    }


def worker_container(v, extra_args, probes, env=None):
    container = {
        "name": "worker",
        "image": v["image"],
        "imagePullPolicy": v["image_pull_policy"],
        "command": ["ctrps-worker", "--config", f"{CONFIG_DIR}/{CONFIG_NAME}",
                    "--metrics-listen", f"0.0.0.0:{v['worker_metrics_port']}",
                    "--input", v["input"]] + extra_args,
    }
    if env:
        container["env"] = env
    container["ports"] = [{"name": "metrics", "containerPort": v["worker_metrics_port"], "protocol": "TCP"}]
    container.update(probes)
    container.update({
        "resources": resources(v["worker_cpu_request"], v["worker_memory_request"],
                               v["worker_memory_limit"]),
        "securityContext": container_security(),
        "volumeMounts": common_mounts() + [{"name": "input", "mountPath": INPUT_DIR, "readOnly": True}],
    })
    return container


def worker_volumes(v):
    return common_volumes(v) + [
        {"name": "input", "persistentVolumeClaim": {"claimName": v["input_claim"], "readOnly": True}}]


def worker_deployment(v, ini):
    probes = {
        # Ready once connected to every shard.
        "readinessProbe": http_probe("/readyz", 5, 3),
        "livenessProbe": http_probe("/healthz", 10, 6, initial=10),
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"{v['name']}-worker", "namespace": v["namespace"],
                     "labels": labels(v, "worker")},
        "spec": {
            "replicas": v["workers"],
            # Never two generations of workers on the same input at once.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels(v, "worker")},
            "template": {
                "metadata": {"labels": labels(v, "worker"),
                             "annotations": pod_annotations(v["worker_metrics_port"], ini)},
                "spec": {
                    "terminationGracePeriodSeconds": WORKER_GRACE_S,
                    "securityContext": pod_security(),
                    "containers": [worker_container(v, ["--follow"], probes)],
                    "volumes": worker_volumes(v),
                },
            },
        },
    }


def worker_job(v, ini):
    n = v["job_completions"]
    # Declared, not left implicit, so $(JOB_COMPLETION_INDEX) in the command
    # refers to a variable of this container.
    index = [{"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}]
    container = worker_container(
        v, ["--worker-index", "$(JOB_COMPLETION_INDEX)", "--num-workers", str(n)],
        {"livenessProbe": http_probe("/healthz", 10, 6, initial=10)}, env=index)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"{v['name']}-train", "namespace": v["namespace"],
                     "labels": labels(v, "trainer")},
        "spec": {
            "completionMode": "Indexed",
            "completions": n,
            "parallelism": n,
            # A retried index would read its share of the input again from the
            # start and train on it twice: fail instead, and resume from a
            # checkpoint (ctrps-worker --resume).
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels(v, "trainer"),
                             "annotations": pod_annotations(v["worker_metrics_port"], ini)},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": WORKER_GRACE_S,
                    "securityContext": pod_security(),
                    "containers": [container],
                    "volumes": worker_volumes(v),
                },
            },
        },
    }


def container_argv(container):
    """The argument vector a rendered container runs; a /bin/sh -c script is
    split like the shell would (tests/deploy reads the flags from it)."""
    argv = list(container.get("command", [])) + list(container.get("args", []))
    if argv[:2] == ["/bin/sh", "-c"]:
        script = argv[2]
        argv = shlex.split(script[5:] if script.startswith("exec ") else script)
    return argv


def render(values_path):
    """{file name: [objects]} for the values file at values_path."""
    v = load_values(values_path)
    ini = render_ini(v)
    return {
        "cluster.yaml": [namespace(v), config_map(v, ini), headless_service(v),
                         stateful_set(v, ini), disruption_budget(v)],
        "worker-deployment.yaml": [worker_deployment(v, ini)],
        "worker-job.yaml": [worker_job(v, ini)],
    }


# ---- YAML --------------------------------------------------------------------

PLAIN = re.compile(r"^[A-Za-z_/$][A-Za-z0-9_./$()-]*$")
RESERVED = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"}
KEY_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")


def yaml_scalar(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if PLAIN.match(value) and value.lower() not in RESERVED:
            return value
        return json.dumps(value)
    raise TypeError(f"no YAML for {type(value).__name__}")


def yaml_key(key):
    return key if KEY_PLAIN.match(key) and key.lower() not in RESERVED else json.dumps(key)


def _block(text, pad):
    # A literal block keeps the INI readable; "|" keeps exactly one final newline.
    return ["|"] + [(pad + line) if line else "" for line in text[:-1].split("\n")]


def _is_block(value):
    return (isinstance(value, str) and "\n" in value and value.endswith("\n")
            and not value.endswith("\n\n") and not value.startswith((" ", "\n"))
            and all(line == line.rstrip() for line in value.split("\n")))


def _yaml(value, indent):
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            head = f"{pad}{yaml_key(key)}:"
            if isinstance(item, dict) and item:
                lines.append(head)
                lines.extend(_yaml(item, indent + 2))
            elif isinstance(item, list) and item:
                lines.append(head)
                lines.extend(_yaml(item, indent))
            elif isinstance(item, (dict, list)):
                lines.append(f"{head} {'{}' if isinstance(item, dict) else '[]'}")
            elif _is_block(item):
                block = _block(item, pad + "  ")
                lines.append(f"{head} {block[0]}")
                lines.extend(block[1:])
            else:
                lines.append(f"{head} {yaml_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                inner = _yaml(item, indent + 2)
                lines.append(f"{pad}- {inner[0].lstrip()}")
                lines.extend(inner[1:])
            elif isinstance(item, (dict, list)):
                raise TypeError("nested or empty collections in a list are not emitted")
            else:
                lines.append(f"{pad}- {yaml_scalar(item)}")
    else:
        raise TypeError(f"no YAML document for {type(value).__name__}")
    return lines


def to_yaml(objects):
    header = ("# Rendered by deploy/k8s/render.py from deploy/k8s/values.ini: do not edit,\n"
              "# change values.ini (or the model config it names) and render again.\n")
    docs = ["\n".join(_yaml(obj, 0)) + "\n" for obj in objects]
    return header + "---\n" + "---\n".join(docs)


# ---- command line ------------------------------------------------------------

def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="Render ctrps's Kubernetes manifests from values.ini.")
    ap.add_argument("--values", default=os.path.join(here, "values.ini"))
    ap.add_argument("--out", default=os.path.join(here, "rendered"))
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if --out differs from the rendering")
    args = ap.parse_args(argv)
    try:
        files = render(args.values)
    except (ValuesError, OSError, configparser.Error) as e:
        print(f"render.py: {args.values}: {e}", file=sys.stderr)
        return 2
    stale = []
    for name, objects in files.items():
        text = to_yaml(objects)
        path = os.path.join(args.out, name)
        if args.check:
            try:
                with open(path, encoding="utf-8") as f:
                    current = f.read()
            except OSError:
                current = None
            if current != text:
                stale.append(path)
        else:
            os.makedirs(args.out, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if os.path.isdir(args.out):
        extra = sorted(set(n for n in os.listdir(args.out) if n.endswith(".yaml")) - set(files))
        stale.extend(os.path.join(args.out, n) for n in extra)
    if stale:
        print("render.py: out of date (run python3 deploy/k8s/render.py): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
