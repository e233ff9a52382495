"""kubernetes/: every overlay rendered offline (`kubectl kustomize`), validated against the
Kubernetes schemas (kubernetes-validate, strict), and its key settings asserted: scale to
zero, probes, auth on by default, no secrets in plain values, resources from the measured RSS.
checkov's Kubernetes checks run on the same rendered output in .ci/iac.sh."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import k8s_rules as k

KUBERNETES_VERSION = "1.32.0"


def kubernetes_validate(path) -> subprocess.CompletedProcess:
    exe = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    return subprocess.run([exe, "--strict", "-k", KUBERNETES_VERSION, str(path)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {o: k.render(k.K8S / "overlays" / o) for o in k.OVERLAYS}


def test_every_option_the_issue_names_is_an_overlay():
    assert set(k.OVERLAYS) == {"pvc", "init-download", "s3-irsa", "azure-workload-identity", "keda-http", "knative"}


@pytest.mark.parametrize("overlay", k.OVERLAYS)
def test_overlay_rules(rendered, overlay):
    assert k.check_overlay(rendered[overlay], overlay) == []


@pytest.mark.parametrize("overlay", k.OVERLAYS)
def test_overlay_passes_the_kubernetes_schemas(rendered, overlay, tmp_path):
    f = tmp_path / f"{overlay}.yaml"
    objects = k.core_objects(rendered[overlay])
    f.write_text(k.dump(objects))
    out = kubernetes_validate(f)
    assert out.returncode == 0, out.stdout + out.stderr
    # One "passed" line per object: nothing was skipped as unknown.
    assert out.stdout.count("passed") == len(objects), out.stdout


def test_schema_validation_catches_a_typo(rendered, tmp_path):
    docs = copy.deepcopy(rendered["pvc"])
    dep = k.of_kind(docs, "Deployment")[0]
    dep["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/ready"}}
    f = tmp_path / "bad.yaml"
    f.write_text(k.dump(k.core_objects(docs)))
    out = kubernetes_validate(f)
    assert out.returncode != 0, out.stdout


def test_every_checkov_skip_has_a_reason(tmp_path):
    import iac_rules as r

    assert r.check_skip_reasons(k.K8S) == []
    bad = tmp_path / "x.yaml"
    bad.write_text('metadata:\n  annotations:\n    checkov.io/skip1: "CKV_K8S_43=ok"\n')
    assert r.check_skip_reasons(tmp_path) != []


def test_workload_and_service_agree(rendered):
    """The Service's target port is the container port the server listens on (PORT)."""
    for overlay in ("pvc", "keda-http"):
        docs = rendered[overlay]
        c = k.server_container(k.workloads(docs)[0])
        svc = [d for d in k.of_kind(docs, "Service", "v1")][0]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        target = svc["spec"]["ports"][0]["targetPort"]
        assert ports.get(target, target) == int(k.config_env(docs, c)["PORT"]) == 8080
        assert svc["spec"]["selector"].items() <= k.workloads(docs)[0]["spec"]["template"]["metadata"]["labels"].items()


# Broken copies: each rule must catch the mistake it exists for.

def _break(docs, fn):
    docs = copy.deepcopy(docs)
    fn(docs)
    return docs


def _server(docs):
    return k.server_container(k.workloads(docs)[0])


@pytest.mark.parametrize("overlay,mutate,expect", [
    ("knative", lambda d: k.workloads(d)[0]["spec"]["template"]["metadata"]["annotations"].update({"autoscaling.knative.dev/min-scale": "1"}), "min-scale"),
    ("knative", lambda d: k.workloads(d)[0]["spec"]["template"]["spec"].update(containerConcurrency=0), "containerConcurrency"),
    ("keda-http", lambda d: k.of_kind(d, "HTTPScaledObject")[0]["spec"]["replicas"].update(min=1), "replicas.min"),
    ("keda-http", lambda d: k.of_kind(d, "Deployment")[0]["spec"].update(replicas=1), "fights KEDA"),
    ("keda-http", lambda d: k.of_kind(d, "HTTPScaledObject")[0]["spec"]["scaleTargetRef"].update(port=8080), "scaleTargetRef.service/port"),
    ("pvc", lambda d: _server(d)["env"].append({"name": "BITNET_ALLOW_NO_AUTH", "value": "1"}), "BITNET_ALLOW_NO_AUTH"),
    ("pvc", lambda d: _server(d).update(args=[]), "--api-key-file"),
    ("pvc", lambda d: _server(d)["env"].append({"name": "API_KEY", "value": "sk-123"}), "literal credential"),
    ("s3-irsa", lambda d: k.of_kind(d, "ConfigMap")[0]["data"].update(AWS_SECRET_ACCESS_KEY="abc"), "credential"),
    ("pvc", lambda d: d.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "stringData": {"API_KEY": "k"}}), "Secret x"),
    ("pvc", lambda d: _server(d)["readinessProbe"]["httpGet"].update(path="/health"), "readinessProbe"),
    ("pvc", lambda d: _server(d)["livenessProbe"]["httpGet"].update(port=9999), "livenessProbe probes port"),
    ("pvc", lambda d: _server(d)["securityContext"].update(readOnlyRootFilesystem=False), "root filesystem"),
    ("pvc", lambda d: _server(d)["resources"]["limits"].update(memory="2Gi"), "memory"),
    ("init-download", lambda d: k.workloads(d)[0]["spec"]["template"]["spec"]["initContainers"][0].update(image="bitnet"), "image"),
    ("init-download", lambda d: k.workloads(d)[0]["spec"]["template"]["spec"]["initContainers"][0]["volumeMounts"].pop(0), "cache volume"),
    ("azure-workload-identity", lambda d: k.workloads(d)[0]["spec"]["template"]["metadata"]["labels"].pop("azure.workload.identity/use"), "workload identity"),
    ("s3-irsa", lambda d: k.of_kind(d, "ServiceAccount")[0]["metadata"].pop("annotations"), "IAM role"),
    ("keda-http", lambda d: k.of_kind(d, "HTTPScaledObject")[0]["metadata"].pop("namespace"), "HTTPScaledObject bitnet is in namespace None"),
    ("pvc", lambda d: _server(d)["securityContext"].pop("seccompProfile"), "seccomp"),
    ("pvc", lambda d: k.workloads(d)[0]["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=60), "terminationGracePeriodSeconds"),
    ("knative", lambda d: k.workloads(d)[0]["spec"]["template"]["metadata"]["annotations"].pop("autoscaling.knative.dev/target-utilization-percentage"), "utilization"),
    ("knative", lambda d: k.of_kind(d, "Namespace")[0]["metadata"]["labels"].pop("pod-security.kubernetes.io/enforce"), "restricted"),
])
def test_rules_catch_broken_copies(rendered, overlay, mutate, expect):
    assert k.check_overlay(rendered[overlay], overlay) == []
    violations = k.check_overlay(_break(rendered[overlay], mutate), overlay)
    assert any(expect in x for x in violations), violations
