"""Rules for the rendered Kubernetes manifests (`kubectl kustomize kubernetes/overlays/X`).

Each `check_*` takes the list of rendered documents and returns its violations (empty =
good), so that tests can also show that a broken copy is caught.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from iac_rules import REPO

K8S = REPO / "kubernetes"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
# Peak RSS of `bitnet serve` with the 2B4T model, 4 slots each holding a 2,000-token prompt
# (docs/deploy.md, Kubernetes): the memory limit must hold it.
MEASURED_PEAK_RSS_BYTES = 2_478_388 * 1024
API_KEY_FILE = "/etc/bitnet/api-key/API_KEY"
# Environment names that carry credentials; none may have a literal value in a manifest.
SECRET_NAME = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|CONNECTION_STRING|SAS)$", re.I)
SECRET_VALUE = re.compile(r"(sig=|AccountKey=|SharedAccessSignature|AKIA[0-9A-Z]{16}|hf_[A-Za-z0-9]{20,})")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if not path:
        raise RuntimeError("kubectl not found (apt-get install kubectl): it renders kubernetes/ offline")
    return path


def render(directory: Path) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def of_kind(docs: list[dict], kind: str, api_prefix: str = "") -> list[dict]:
    return [d for d in docs if d.get("kind") == kind and d.get("apiVersion", "").startswith(api_prefix)]


def workloads(docs: list[dict]) -> list[dict]:
    """The server's workload: a Deployment, or a Knative Service."""
    return of_kind(docs, "Deployment", "apps/") + of_kind(docs, "Service", "serving.knative.dev/")


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def server_container(workload: dict) -> dict:
    return pod_spec(workload)["containers"][0]


def config_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env."""
    env: dict[str, str] = {}
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in of_kind(docs, "ConfigMap")}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(maps[src["configMapRef"]["name"]])
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", "<from %s>" % ",".join(e.get("valueFrom", {})))
    return env


def parallel(docs: list[dict]) -> int:
    return int(config_env(docs, server_container(workloads(docs)[0]))["BITNET_PARALLEL"])


def _bytes(q: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    if not m or (m.group(2) and m.group(2) not in units):
        raise ValueError(f"quantity {q!r}")
    return float(m.group(1)) * units.get(m.group(2), 1)


def check_one_workload(docs: list[dict]) -> list[str]:
    w = workloads(docs)
    return [] if len(w) == 1 else [f"expected one server workload, found {[x['kind'] for x in w]}"]


CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding"}


def check_namespace(docs: list[dict]) -> list[str]:
    """Everything in the one namespace the base creates (so that names resolve and the Pod
    Security admission label applies), which enforces the restricted standard."""
    ns = of_kind(docs, "Namespace")
    if len(ns) != 1:
        return [f"expected one Namespace, found {len(ns)}"]
    name = ns[0]["metadata"]["name"]
    v = [] if ns[0]["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted" else [
        f"Namespace {name} does not enforce the restricted Pod Security Standard"]
    for d in docs:
        if d["kind"] not in CLUSTER_SCOPED and d["metadata"].get("namespace") != name:
            v.append(f"{d['kind']} {d['metadata']['name']} is in namespace {d['metadata'].get('namespace')!r}, not {name!r}")
    return v


def check_security(docs: list[dict]) -> list[str]:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities, every
    container (init containers too); no API server token."""
    v = []
    for w in workloads(docs):
        spec = pod_spec(w)
        if spec.get("automountServiceAccountToken") is not False:
            v.append(f"{w['kind']}: automountServiceAccountToken is not false")
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            where = f"{w['kind']}/{c['name']}"
            if sc.get("runAsNonRoot") is not True or not sc.get("runAsUser"):
                v.append(f"{where}: not forced to a non-root user")
            if sc.get("readOnlyRootFilesystem") is not True:
                v.append(f"{where}: root filesystem is writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                v.append(f"{where}: privilege escalation allowed")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                v.append(f"{where}: capabilities not dropped")
            if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                v.append(f"{where}: no RuntimeDefault seccomp profile (the restricted standard needs it)")
            if c.get("image", "") in ("", "bitnet") or not re.match(r"[\w.-]+(:\d+)?/", c["image"]):
                v.append(f"{where}: image {c.get('image')!r} not set by the overlay's images")
    return v


def check_probes(docs: list[dict]) -> list[str]:
    """Liveness on /health (200 while the model loads), readiness on /ready (200 once it is
    loaded), both on the port the server listens on."""
    v = []
    for w in workloads(docs):
        c = server_container(w)
        port_names = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        listen = int(config_env(docs, c).get("PORT", list(port_names.values())[0] if port_names else 0))
        for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
            get = c.get(probe, {}).get("httpGet")
            if not get or get.get("path") != path:
                v.append(f"{w['kind']}: {probe} is not an HTTP GET of {path}")
                continue
            port = get.get("port")
            if port is not None and port_names.get(port, port) != listen:
                v.append(f"{w['kind']}: {probe} probes port {port}, the server listens on {listen}")
        if c.get("startupProbe", {}).get("httpGet", {}).get("path", "/health") != "/health":
            v.append(f"{w['kind']}: the startup probe must use /health (the model may still be downloading)")
    return v


def check_auth(docs: list[dict]) -> list[str]:
    """Auth is on by default: the server reads its key from a mounted Secret that must exist,
    and nothing opts out of auth."""
    v = []
    for w in workloads(docs):
        spec = pod_spec(w)
        c = server_container(w)
        args = c.get("args", [])
        if "--api-key-file" not in args or args[args.index("--api-key-file") + 1] != API_KEY_FILE:
            v.append(f"{w['kind']}: the server is not given --api-key-file {API_KEY_FILE}")
        mount = next((m for m in c.get("volumeMounts", []) if API_KEY_FILE.startswith(m["mountPath"] + "/")), None)
        vol = next((x for x in spec.get("volumes", []) if mount and x["name"] == mount["name"]), None)
        secret = (vol or {}).get("secret")
        if not secret or secret.get("optional", False):
            v.append(f"{w['kind']}: {API_KEY_FILE} is not a required Secret volume")
        env = config_env(docs, c)
        if env.get("BITNET_ALLOW_NO_AUTH", "").strip().lower() in ("1", "true", "yes", "on"):
            v.append(f"{w['kind']}: BITNET_ALLOW_NO_AUTH turns auth off")
    return v


def check_no_plain_secrets(docs: list[dict]) -> list[str]:
    """No credential in a ConfigMap, an env value, or a Secret shipped with the manifests."""
    v = []
    for d in of_kind(docs, "Secret"):
        v.append(f"Secret {d['metadata']['name']} is part of the manifests (create it outside them)")
    for d in of_kind(docs, "ConfigMap"):
        for k, val in (d.get("data") or {}).items():
            if SECRET_NAME.search(k) or SECRET_VALUE.search(str(val)):
                v.append(f"ConfigMap {d['metadata']['name']}: {k} looks like a credential")
    for w in workloads(docs):
        spec = pod_spec(w)
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                if "value" in e and (SECRET_NAME.search(e["name"]) or SECRET_VALUE.search(str(e["value"]))):
                    v.append(f"{w['kind']}/{c['name']}: env {e['name']} has a literal credential")
    return v


GENERATION_TIMEOUT_SECS = 600


def check_grace(docs: list[dict]) -> list[str]:
    """A pod told to stop lets its requests finish; the generation timeout bounds them."""
    v = []
    for w in of_kind(docs, "Deployment", "apps/"):
        grace = pod_spec(w).get("terminationGracePeriodSeconds", 30)
        if grace < GENERATION_TIMEOUT_SECS:
            v.append(f"Deployment: terminationGracePeriodSeconds {grace} cuts generations short of {GENERATION_TIMEOUT_SECS} s")
    return v


def check_resources(docs: list[dict]) -> list[str]:
    """CPU and memory requested and limited, requests equal to limits (Guaranteed QoS: whole
    cores, no eviction under pressure), the limit above the measured peak RSS."""
    v = []
    for w in workloads(docs):
        spec = pod_spec(w)
        for c in spec.get("initContainers", []) + spec["containers"]:
            r = c.get("resources", {})
            req, lim = r.get("requests", {}), r.get("limits", {})
            where = f"{w['kind']}/{c['name']}"
            for k in ("cpu", "memory"):
                if k not in req or k not in lim:
                    v.append(f"{where}: {k} request and limit must both be set")
                elif _bytes(str(req[k]).rstrip("m")) != _bytes(str(lim[k]).rstrip("m")):
                    v.append(f"{where}: {k} request {req[k]} differs from its limit {lim[k]}")
        lim = server_container(w).get("resources", {}).get("limits", {})
        if "memory" in lim and _bytes(lim["memory"]) < MEASURED_PEAK_RSS_BYTES:
            v.append(f"{w['kind']}: memory limit {lim['memory']} is below the measured peak RSS")
    return v


def check_model_source(docs: list[dict], overlay: str) -> list[str]:
    """Each overlay gets the model the way its name says, without static credentials."""
    v = []
    w = workloads(docs)[0]
    spec = pod_spec(w)
    c = server_container(w)
    env = config_env(docs, c)
    model = env.get("BITNET_MODEL", "")
    sa = next((d for d in of_kind(docs, "ServiceAccount") if d["metadata"]["name"] == spec.get("serviceAccountName")), None)
    annotations = (sa or {}).get("metadata", {}).get("annotations", {})
    if any(k in env for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_CLIENT_SECRET")):
        v.append(f"{overlay}: static cloud credentials in the environment")
    if overlay in ("pvc", "keda-http"):
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        vols = {x["name"]: x for x in spec.get("volumes", [])}
        m = mounts.get("/models")
        pvc = vols.get(m["name"], {}).get("persistentVolumeClaim") if m else None
        if not model.startswith("/models/") or not pvc or not m.get("readOnly") or not pvc.get("readOnly"):
            v.append(f"{overlay}: the model is not read from a read-only PersistentVolumeClaim at /models")
        elif not any(d["metadata"]["name"] == pvc["claimName"] for d in of_kind(docs, "PersistentVolumeClaim")):
            v.append(f"{overlay}: PersistentVolumeClaim {pvc['claimName']} is not in the manifests")
    elif overlay == "init-download":
        init = spec.get("initContainers", [])
        if len(init) != 1 or init[0].get("command") != ["/bitnet", "fetch"] or init[0].get("args") != ["$(BITNET_MODEL)"]:
            v.append(f"{overlay}: no init container running `bitnet fetch $(BITNET_MODEL)`")
        else:
            ienv = config_env(docs, init[0])
            for k in ("BITNET_MODEL", "BITNET_CACHE_DIR"):
                if ienv.get(k) != env.get(k):
                    v.append(f"{overlay}: the init container's {k} differs from the server's: the server would download again")
            cache = env.get("BITNET_CACHE_DIR", "")
            imounts = {m["mountPath"]: m["name"] for m in init[0].get("volumeMounts", [])}
            smounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if not cache or imounts.get(cache) is None or imounts.get(cache) != smounts.get(cache):
                v.append(f"{overlay}: the init container does not fill the server's cache volume {cache}")
    elif overlay == "s3-irsa":
        if not model.startswith("s3://"):
            v.append(f"{overlay}: BITNET_MODEL is not an s3:// URI")
        if not re.fullmatch(r"arn:aws[\w-]*:iam::\w+:role/[\w+=,.@/-]+", annotations.get("eks.amazonaws.com/role-arn", "")):
            v.append(f"{overlay}: the service account has no IAM role (eks.amazonaws.com/role-arn)")
    elif overlay == "azure-workload-identity":
        labels = w["spec"]["template"].get("metadata", {}).get("labels", {})
        if not model.startswith("az://"):
            v.append(f"{overlay}: BITNET_MODEL is not an az:// URI")
        if labels.get("azure.workload.identity/use") != "true" or not annotations.get("azure.workload.identity/client-id"):
            v.append(f"{overlay}: workload identity is not enabled (pod label and service account client-id)")
    elif overlay == "knative":
        if not model:
            v.append(f"{overlay}: no BITNET_MODEL")
    else:
        v.append(f"{overlay}: no rule for this overlay; add one to check_model_source")
    return v


def check_scale_to_zero(docs: list[dict], overlay: str) -> list[str]:
    """keda-http and knative scale to zero, one pod per BITNET_PARALLEL requests in flight."""
    v = []
    slots = parallel(docs)
    if overlay == "keda-http":
        hso = of_kind(docs, "HTTPScaledObject", "http.keda.sh/")
        dep = of_kind(docs, "Deployment", "apps/")
        svc = of_kind(docs, "Service", "v1")
        if len(hso) != 1 or not dep:
            return [f"{overlay}: expected one HTTPScaledObject and a Deployment"]
        s = hso[0]["spec"]
        ref = s.get("scaleTargetRef", {})
        if s.get("replicas", {}).get("min") != 0:
            v.append(f"{overlay}: replicas.min is not 0")
        if s.get("scalingMetric", {}).get("concurrency", {}).get("targetValue") != slots:
            v.append(f"{overlay}: the concurrency target is not BITNET_PARALLEL ({slots})")
        if ref.get("name") != dep[0]["metadata"]["name"] or ref.get("kind", "Deployment") != "Deployment":
            v.append(f"{overlay}: scaleTargetRef does not name the Deployment")
        target_svc = next((x for x in svc if x["metadata"]["name"] == ref.get("service")), None)
        if not target_svc or ref.get("port") not in [p["port"] for p in target_svc["spec"]["ports"]]:
            v.append(f"{overlay}: scaleTargetRef.service/port is not a port of a Service in the manifests")
        if "replicas" in dep[0]["spec"]:
            v.append(f"{overlay}: the Deployment fixes replicas, which fights KEDA")
    elif overlay == "knative":
        ksvc = of_kind(docs, "Service", "serving.knative.dev/")
        if len(ksvc) != 1 or of_kind(docs, "Deployment"):
            return [f"{overlay}: expected one Knative Service and no Deployment"]
        t = ksvc[0]["spec"]["template"]
        ann = t.get("metadata", {}).get("annotations", {})
        if ann.get("autoscaling.knative.dev/min-scale") != "0":
            v.append(f"{overlay}: min-scale is not 0")
        if t["spec"].get("containerConcurrency") != slots:
            v.append(f"{overlay}: containerConcurrency is not BITNET_PARALLEL ({slots})")
        if ann.get("autoscaling.knative.dev/target", str(slots)) != str(slots):
            v.append(f"{overlay}: the autoscaling target is not BITNET_PARALLEL ({slots})")
        if ann.get("autoscaling.knative.dev/target-utilization-percentage") != "100":
            v.append(f"{overlay}: target utilization is not 100 % (Knative's 70 % default scales before the slots are full)")
    return v


def check_overlay(docs: list[dict], overlay: str) -> list[str]:
    v = check_one_workload(docs)
    if v:
        return v
    for check in (check_namespace, check_grace, check_security, check_probes, check_auth, check_no_plain_secrets, check_resources):
        v += check(docs)
    return v + check_model_source(docs, overlay) + check_scale_to_zero(docs, overlay)


def core_objects(docs: list[dict]) -> list[dict]:
    """What a Kubernetes schema validator can check: the core objects as they are, and the pod
    template of a Knative Service as a Pod (Knative's template is a PodSpec subset)."""
    out = []
    for d in docs:
        api = d.get("apiVersion", "")
        if api.startswith("serving.knative.dev/"):
            spec = copy.deepcopy(_without(d["spec"]["template"]["spec"], ("containerConcurrency", "timeoutSeconds")))
            for c in spec["containers"]:
                # Knative probes the serving port when a probe names none.
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    if "httpGet" in c.get(probe, {}):
                        c[probe]["httpGet"].setdefault("port", c["ports"][0]["containerPort"])
            out.append({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": d["metadata"]["name"], **d["spec"]["template"].get("metadata", {})},
                        "spec": spec})
        elif "." not in api.split("/")[0] or api.split("/")[0].endswith(".k8s.io") or api.startswith("apps/"):
            out.append(d)
    return out


def _without(d: dict, keys: tuple[str, ...]) -> dict:
    return {k: val for k, val in d.items() if k not in keys}


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)
