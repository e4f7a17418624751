#!/usr/bin/python3
"""Offline validation of the Kubernetes manifests (deploy/k8s).

1. deploy/k8s/rendered/*.yaml are what render.py makes of values.ini now.
2. Each rendered set (the committed values, and a variant with other names,
   ports and counts) is checked:
   - the YAML parses back to exactly the objects rendered (the emitter);
   - every object against the Kubernetes API types of Debian's
     python3-kubernetes (22.6, API 1.22): no unknown field, right types,
     required fields present. kubectl cannot do this without a cluster:
     --dry-run=client still asks the API server for the resource mapping;
   - cross references: the shard count and addresses in the ConfigMap's INI
     against the StatefulSet and its headless Service, every port a probe,
     annotation, INI key or flag names against the declared container ports,
     every mounted volume declared and every declared one mounted, config and
     secret paths against their mounts, selectors against pod labels, the
     grace period against the write-back bound, the indexed Job's worker
     index, and the image's user and paths against deploy/Containerfile.
Runs with Debian's /usr/bin/python3 (python3-yaml, python3-kubernetes from
deploy/install-deps.sh); skips (exit 77) saying which is missing.
"""
import configparser
import importlib.util
import json
import os
import re
import sys
import tempfile

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
K8S = os.path.join(SRC, "deploy", "k8s")

try:
    import yaml
except ImportError:
    print("SKIP: PyYAML is missing for this python3 (Debian package python3-yaml)")
    sys.exit(77)
try:
    import kubernetes.client
    import kubernetes.client.models as models
except ImportError:
    print("SKIP: the Kubernetes API types are missing for this python3 (Debian package python3-kubernetes)")
    sys.exit(77)

spec = importlib.util.spec_from_file_location("render", os.path.join(K8S, "render.py"))
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)

errors = []


def error(where, msg):
    errors.append(f"{where}: {msg}")


# ---- schema: the API types of python3-kubernetes ----------------------------

PRIMITIVES = {
    "str": (str,), "int": (int,), "bool": (bool,), "float": (int, float),
    "datetime": (str,), "date": (str,), "object": (object,),
}


def check_type(value, typ, where):
    if typ.startswith("list["):
        if not isinstance(value, list):
            return error(where, f"expected a list ({typ}), got {type(value).__name__}")
        for i, item in enumerate(value):
            check_type(item, typ[5:-1], f"{where}[{i}]")
        return
    if typ.startswith("dict("):
        inner = typ[typ.index(",") + 1:-1].strip()
        if not isinstance(value, dict):
            return error(where, f"expected a map ({typ}), got {type(value).__name__}")
        for k, item in value.items():
            if not isinstance(k, str):
                error(where, f"map key {k!r} is not a string")
            check_type(item, inner, f"{where}.{k}")
        return
    if typ in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[typ])
        if typ == "int" and isinstance(value, bool):
            ok = False
        if typ in ("int", "float") and isinstance(value, bool):
            ok = False
        if not ok:
            error(where, f"expected {typ}, got {type(value).__name__} {value!r}")
        return
    cls = getattr(models, typ, None)
    if cls is None:
        return error(where, f"unknown API type {typ}")
    if not isinstance(value, dict):
        return error(where, f"expected an object ({typ}), got {type(value).__name__}")
    by_json = {cls.attribute_map[a]: t for a, t in cls.openapi_types.items()}
    for key, item in value.items():
        if key not in by_json:
            error(where, f"unknown field '{key}' in {typ}")
        else:
            check_type(item, by_json[key], f"{where}.{key}")


class _Response:
    def __init__(self, obj):
        self.data = json.dumps(obj)


def check_schema(obj, where):
    version = obj.get("apiVersion", "")
    kind = obj.get("kind", "")
    typ = f"V1{kind}"
    if version not in ("v1", "apps/v1", "batch/v1", "policy/v1") or not hasattr(models, typ):
        return error(where, f"unexpected apiVersion/kind {version}/{kind}")
    check_type(obj, typ, f"{where}({kind})")
    # Required fields: the generated models refuse to be built without them.
    try:
        kubernetes.client.ApiClient().deserialize(_Response(obj), typ)
    except (ValueError, TypeError) as e:
        error(where, f"{kind}: {e}")


# ---- structure -----------------------------------------------------------

def parse_ini(text):
    """{section: {key: [values]}} keeping repeated keys, as libinih does."""
    out = {}
    section = None
    for raw in text.splitlines():
        line = re.sub(r"\s;.*$", "", raw).strip()
        if not line or line.startswith((";", "#")):
            continue
        m = re.match(r"^\[([^\]]+)\]$", line)
        if m:
            section = out.setdefault(m.group(1).strip(), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def port_of(hostport):
    return int(hostport.rsplit(":", 1)[1])


def containerfile_facts():
    text = open(os.path.join(SRC, "deploy", "Containerfile")).read()
    user = re.search(r"^USER\s+(\d+):(\d+)\s*$", text, re.M)
    volume = re.search(r'^VOLUME\s+\["([^"]+)"\]', text, re.M)
    return {"uid": int(user.group(1)) if user else None, "gid": int(user.group(2)) if user else None,
            "volume": volume.group(1) if volume else None}


def pod_specs(objs):
    """(where, workload, pod template) for every workload."""
    for o in objs:
        if o["kind"] in ("StatefulSet", "Deployment", "Job"):
            yield f"{o['kind']}/{o['metadata']['name']}", o, o["spec"]["template"]


def flag(argv, name):
    if name in argv and argv.index(name) + 1 < len(argv):
        return argv[argv.index(name) + 1]
    return None


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_structure(objs, values, where):
    image = containerfile_facts()
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    ns = values["namespace"]
    # Names unique per kind, everything in the one namespace, which exists.
    seen = set()
    for o in objs:
        key = (o["kind"], o["metadata"]["name"])
        if key in seen:
            error(where, f"{key} appears twice")
        seen.add(key)
        if o["kind"] != "Namespace" and o["metadata"].get("namespace") != ns:
            error(where, f"{key} is not in namespace {ns}")
    if [n["metadata"]["name"] for n in by_kind.get("Namespace", [])] != [ns]:
        error(where, f"the Namespace {ns} is not declared exactly once")
    if "Secret" in by_kind:
        error(where, "a Secret is rendered: its value would be in the repository")

    (sts,) = by_kind["StatefulSet"]
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    config_maps = {c["metadata"]["name"]: c for c in by_kind["ConfigMap"]}
    svc = services.get(sts["spec"]["serviceName"])
    if svc is None:
        return error(where, f"StatefulSet.serviceName {sts['spec']['serviceName']} has no Service")
    if svc["spec"].get("clusterIP") != "None":
        error(where, "the StatefulSet's Service is not headless (clusterIP: None)")
    if not svc["spec"].get("publishNotReadyAddresses"):
        error(where, "the headless Service hides recovering shards from DNS")
    if not matches(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"]):
        error(where, "the Service's selector does not select the shard pods")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if pdb["spec"]["selector"]["matchLabels"] != sts["spec"]["selector"]["matchLabels"]:
            error(where, "the PodDisruptionBudget does not select the shards")

    shard_c = sts["spec"]["template"]["spec"]["containers"][0]
    shard_ports = {p["name"]: p["containerPort"] for p in shard_c["ports"]}
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for name, p in svc_ports.items():
        if p["targetPort"] not in shard_ports or shard_ports[p["targetPort"]] != p["port"]:
            error(where, f"Service port {name} -> {p['targetPort']} is not the shard's port {p['port']}")

    # The INI: shard count and addresses, ports, paths.
    argv = render.container_argv(shard_c)
    config_path = flag(argv, "--config")
    cm_volume = next((v for v in sts["spec"]["template"]["spec"]["volumes"] if "configMap" in v), None)
    cm_mount = next((m for m in shard_c["volumeMounts"] if cm_volume and m["name"] == cm_volume["name"]), None)
    if not (config_path and cm_mount and os.path.dirname(config_path) == cm_mount["mountPath"]):
        return error(where, f"--config {config_path} is not in the ConfigMap's mount")
    cm = config_maps.get(cm_volume["configMap"]["name"])
    if cm is None or os.path.basename(config_path) not in cm["data"]:
        return error(where, f"ConfigMap {cm_volume['configMap']['name']} has no {os.path.basename(config_path)}")
    ini = parse_ini(cm["data"][os.path.basename(config_path)])
    shards = [s.strip() for s in ",".join(ini["cluster"]["shards"]).split(",")]
    if len(shards) != sts["spec"]["replicas"]:
        error(where, f"[cluster] shards lists {len(shards)}, the StatefulSet runs {sts['spec']['replicas']}")
    domain = values["cluster_domain"]
    for i, s in enumerate(shards):
        want = f"{sts['metadata']['name']}-{i}.{svc['metadata']['name']}.{ns}.svc.{domain}:{svc_ports['rpc']['port']}"
        if s != want:
            error(where, f"[cluster] shards[{i}] is {s}, the pod is {want}")
    server = {k: v[-1] for k, v in ini.get("server", {}).items()}
    if server.get("bind") != "0.0.0.0":
        error(where, "[server] bind must be 0.0.0.0: peers reach the pod at its own address")
    if port_of(server.get("metrics_listen", ":0")) != shard_ports.get("metrics"):
        error(where, f"[server] metrics_listen {server.get('metrics_listen')} is not the metrics port")
    data_mount = next((m for m in shard_c["volumeMounts"] if m["name"] == "data"), None)
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    if "data" not in claims or not data_mount or server.get("data_dir") != data_mount["mountPath"]:
        error(where, "[server] data_dir is not the mount of the PersistentVolumeClaim 'data'")
    if data_mount and image["volume"] != data_mount["mountPath"]:
        error(where, f"the data mount {data_mount['mountPath']} is not the image's VOLUME {image['volume']}")
    if int(server.get("memory_mb", 0)) != values["memory_mb"]:
        error(where, "[server] memory_mb is not values' memory_mb")
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    if grace < 30 + 3 * values["memory_mb"] / values["writeback_mib_per_s"]:
        error(where, f"terminationGracePeriodSeconds {grace} is shorter than the write-back bound")
    if "POD_NAME" not in {e["name"] for e in shard_c.get("env", [])} or \
            flag(argv, "--shard") != "${POD_NAME##*-}":
        error(where, "the shard index is not the pod's ordinal from POD_NAME")

    # Every pod: volumes, mounts, secret, probes, ports, annotations, user.
    for pwhere, workload, tmpl in pod_specs(objs):
        pw = f"{where} {pwhere}"
        pod = tmpl["spec"]
        labels = tmpl["metadata"]["labels"]
        selector = workload["spec"].get("selector", {}).get("matchLabels")
        if selector is not None and not matches(selector, labels):
            error(pw, "the selector does not match the pod template's labels")
        for _, other, other_tmpl in pod_specs(objs):
            sel = other["spec"].get("selector", {}).get("matchLabels")
            if other is not workload and sel and matches(sel, labels):
                error(pw, f"the pods are also selected by {other['kind']}/{other['metadata']['name']}")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claim_names = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        mounted = set()
        sec = pod.get("securityContext", {})
        if not sec.get("runAsNonRoot") or sec.get("runAsUser") != image["uid"] or sec.get("fsGroup") != image["gid"]:
            error(pw, f"the pod does not run as the image's non-root user {image['uid']}")
        for c in pod["containers"]:
            cw = f"{pw} container {c['name']}"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            argv = render.container_argv(c)
            for m in c.get("volumeMounts", []):
                mounted.add(m["name"])
                if m["name"] not in volumes and m["name"] not in claim_names:
                    error(cw, f"mounts volume {m['name']}, which is not declared")
            for probe_name in ("readinessProbe", "livenessProbe"):
                probe = c.get(probe_name)
                if probe is None:
                    continue
                port = probe["httpGet"]["port"]
                if port not in ports and port not in ports.values():
                    error(cw, f"{probe_name} probes port {port}, which is not declared")
                if ports.get(port, port) != ports.get("metrics"):
                    error(cw, f"{probe_name} is not on the metrics port")
                want = "/readyz" if probe_name == "readinessProbe" else "/healthz"
                if probe["httpGet"]["path"] != want:
                    error(cw, f"{probe_name} path {probe['httpGet']['path']}, expected {want}")
            if "livenessProbe" not in c:
                error(cw, "no livenessProbe")
            if workload["kind"] != "Job" and "readinessProbe" not in c:
                error(cw, "no readinessProbe")
            ann = tmpl["metadata"].get("annotations", {})
            if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/path") != "/metrics" \
                    or ann.get("prometheus.io/port") != str(ports.get("metrics")):
                error(cw, "the Prometheus annotations do not name the metrics port and /metrics")
            listen = flag(argv, "--metrics-listen")
            if listen is not None and port_of(listen) != ports.get("metrics"):
                error(cw, f"--metrics-listen {listen} is not the metrics port {ports.get('metrics')}")
            if listen is None and c is not shard_c:
                error(cw, "no --metrics-listen")
            if flag(argv, "--config") != config_path:
                error(cw, f"--config {flag(argv, '--config')} is not {config_path}")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if volumes.get(mounts.get(cm_mount["mountPath"]), {}).get("configMap", {}).get("name") != cm["metadata"]["name"]:
                error(cw, f"does not mount ConfigMap {cm['metadata']['name']} at {cm_mount['mountPath']}")
            # The auth secret: auth_secret_file is a key of the mounted Secret.
            secret_path = server.get("auth_secret_file")
            vol = volumes.get(mounts.get(os.path.dirname(secret_path or "")))
            items = [i["path"] for i in (vol or {}).get("secret", {}).get("items", [])]
            if not vol or vol["secret"]["secretName"] != values["auth_secret"] or \
                    os.path.basename(secret_path) not in items:
                error(cw, f"auth_secret_file {secret_path} is not in Secret {values['auth_secret']}'s mount")
            input_path = flag(argv, "--input")
            if input_path is not None:
                in_vol = volumes.get(mounts.get(render.INPUT_DIR))
                if not input_path.startswith(render.INPUT_DIR) or not in_vol or \
                        in_vol.get("persistentVolumeClaim", {}).get("claimName") != values["input_claim"]:
                    error(cw, f"--input {input_path} is not on the input claim {values['input_claim']}")
        for name in set(volumes) - mounted:
            error(pw, f"volume {name} is declared and never mounted")
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in config_maps:
                error(pw, f"volume {v['name']} refers to ConfigMap {v['configMap']['name']}, not rendered")
            if "secret" in v and v["secret"]["secretName"] != values["auth_secret"]:
                error(pw, f"volume {v['name']} refers to an unknown Secret")

    # Workers: the Deployment follows, the indexed Job splits the input.
    (dep,) = by_kind["Deployment"]
    if dep["spec"]["replicas"] != values["workers"] or "--follow" not in render.container_argv(dep["spec"]["template"]["spec"]["containers"][0]):
        error(where, "the worker Deployment's replicas or --follow are not from values")
    (job,) = by_kind["Job"]
    jspec = job["spec"]
    jc = jspec["template"]["spec"]["containers"][0]
    jargv = render.container_argv(jc)
    if jspec.get("completionMode") != "Indexed" or jspec["completions"] != values["job_completions"] \
            or jspec["parallelism"] != jspec["completions"]:
        error(where, "the Job is not Indexed with completions = parallelism = job_completions")
    if flag(jargv, "--num-workers") != str(jspec["completions"]):
        error(where, f"--num-workers {flag(jargv, '--num-workers')} is not the Job's completions")
    if flag(jargv, "--worker-index") != "$(JOB_COMPLETION_INDEX)":
        error(where, "--worker-index does not come from JOB_COMPLETION_INDEX")
    env = {e["name"]: e for e in jc.get("env", [])}
    ref = env.get("JOB_COMPLETION_INDEX", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if ref != "metadata.annotations['batch.kubernetes.io/job-completion-index']":
        error(where, "JOB_COMPLETION_INDEX is not the pod's completion-index annotation")
    if jspec["template"]["spec"].get("restartPolicy") not in ("Never", "OnFailure"):
        error(where, "the Job's pods need restartPolicy Never or OnFailure")


def check_set(files, values, where):
    """files: {name: (text, objects rendered)}."""
    everything = []
    for name, (text, objs) in sorted(files.items()):
        parsed = [d for d in yaml.safe_load_all(text) if d is not None]
        if parsed != objs:
            error(f"{where}/{name}", "the YAML does not parse back to the rendered objects")
        for i, o in enumerate(parsed):
            check_schema(o, f"{where}/{name}#{i}")
        everything.extend(parsed)
    try:
        check_structure(everything, values, where)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        error(where, f"structure check could not proceed: {type(e).__name__} {e}")


def main():
    values_path = os.path.join(K8S, "values.ini")
    rendered_dir = os.path.join(K8S, "rendered")
    # 1. The committed manifests are up to date.
    if render.main(["--values", values_path, "--out", rendered_dir, "--check"]) != 0:
        error("deploy/k8s/rendered", "out of date: run python3 deploy/k8s/render.py and commit")
    committed = {}
    for name, objs in render.render(values_path).items():
        with open(os.path.join(rendered_dir, name), encoding="utf-8") as f:
            committed[name] = (f.read(), objs)
    check_set(committed, render.load_values(values_path), "rendered")

    # 2. Other values: the renderer keeps everything consistent, not just once.
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    cp.read(values_path)
    cp["cluster"].update({"name": "ps", "namespace": "ads-train", "cluster_domain": "k8s.example",
                          "config": os.path.join(SRC, "deploy", "slots-dcnv2-can.ini")})
    cp["shards"].update({"count": "5", "rpc_port": "17000", "metrics_port": "18000",
                         "memory_mb": "8192", "storage_class": "fast-ssd"})
    cp["workers"].update({"replicas": "1", "metrics_port": "18100", "input": "/input/day-*.tsv",
                          "job_completions": "7"})
    with tempfile.TemporaryDirectory() as tmp:
        variant = os.path.join(tmp, "values.ini")
        with open(variant, "w") as f:
            cp.write(f)
        files = {n: (render.to_yaml(o), o) for n, o in render.render(variant).items()}
        check_set(files, render.load_values(variant), "variant")
        # 3. The checker itself can fail: a broken rendering must be caught.
        planted = json.loads(json.dumps(files["cluster.yaml"][1]))
        planted[3]["spec"]["replicas"] += 1
        planted[3]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "web"
        planted[3]["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {}
        before = len(errors)
        check_set({"cluster.yaml": (render.to_yaml(planted), planted),
                   "worker-deployment.yaml": files["worker-deployment.yaml"],
                   "worker-job.yaml": files["worker-job.yaml"]}, render.load_values(variant), "planted")
        caught = errors[before:]
        del errors[before:]
        for needle in ("lists 5, the StatefulSet runs 6", "probes port web", "unknown field 'livenessProb'"):
            if not any(needle in e for e in caught):
                error("self-test", f"a planted fault was not reported: {needle}")

    if errors:
        for e in errors:
            print("FAIL:", e)
        return 1
    n = sum(len(objs) for _, objs in committed.values())
    print(f"OK: {len(committed)} files, {n} objects up to date, valid against the Kubernetes 1.22 API types, "
          f"consistent (also for a 5-shard variant)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
