"""Bicep templates: parsed with pycep (the parser checkov uses), key settings asserted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import iac_rules as r


@pytest.fixture(scope="module")
def flex():
    return r.load_bicep(r.BICEP_FLEX)


@pytest.fixture(scope="module")
def aca():
    return r.load_bicep(r.BICEP_ACA)


def test_flex_satisfies_rules(flex):
    assert r.check_flex(flex) == []


def test_containerapp_satisfies_rules(aca):
    assert r.check_containerapp(aca) == []


def test_flex_scale_to_zero_and_memory(flex):
    sc = flex["resources"]["functionApp"]["config"]["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    assert sc["alwaysReady"] == []
    assert flex["variables"]["instanceMemoryMB"]["value"] == 4096
    assert "maximumInstanceCount" in flex["parameters"]


def test_models_reader_role(flex, aca):
    for doc in (flex, aca):
        body = doc["resources"]["modelsReader"]["config"]
        assert body["scope"] == "modelsContainer"
        assert doc["resources"]["modelsContainer"]["config"]["name"] == "modelsContainerName"
        assert doc["variables"]["modelsContainerName"]["value"] == "models"
        assert r._role_id(doc, body) == r.STORAGE_BLOB_DATA_READER


def test_containerapp_probes_text():
    text = r.BICEP_ACA.read_text()
    assert re.search(r"type: 'Liveness'\s+httpGet: \{\s+path: '/health'", text)
    assert re.search(r"type: 'Readiness'\s+httpGet: \{\s+path: '/ready'", text)
    assert re.search(r"var minReplicas = 0\b", text)


def test_skip_comments_have_reasons():
    assert r.check_skip_reasons(r.REPO / "bicep") == []


# ----------------------------------------------------------------------------------------
# The checker must be able to fail: each mutation of a copy must be caught.

FLEX_MUTATIONS = {
    "always ready": ("alwaysReady: []", "alwaysReady: [\n          {\n            name: 'http'\n            instanceCount: 1\n          }\n        ]", "alwaysReady"),
    "small instance": ("var instanceMemoryMB = 4096", "var instanceMemoryMB = 2048", "instanceMemoryMB"),
    "wrong runtime": ("name: 'custom'", "name: 'node'", "runtime"),
    "fixed max": ("maximumInstanceCount: maximumInstanceCount", "maximumInstanceCount: 40", "maximumInstanceCount"),
    "reader on account": ("  scope: modelsContainer\n", "  scope: storage\n", "scoped on a blob container"),
    "contributor on models": ("  scope: deploymentContainer\n", "  scope: modelsContainer\n", "wider than needed"),
    "wrong role": ("var storageBlobDataReaderRoleId = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'",
                   "var storageBlobDataReaderRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'", "unexpected role"),
    "disk storage": ("value: 'memory'", "value: 'disk'", "BITNET_MODEL_STORAGE"),
    "shared keys": ("allowSharedKeyAccess: false", "allowSharedKeyAccess: true", "allowSharedKeyAccess"),
}

ACA_MUTATIONS = {
    "min one": ("var minReplicas = 0", "var minReplicas = 1", "minReplicas"),
    "ready on root": ("path: '/ready'", "path: '/'", "Readiness"),
    "no liveness": ("type: 'Liveness'", "type: 'Startup'", "Liveness"),
    "old shape": ("param cpu string = '2.0'", "param cpu string = '0.25'", "cpu"),
    "small memory": ("param memory string = '4Gi'", "param memory string = '0.5Gi'", "memory"),
    "wrong port": ("var targetPort = 8080", "var targetPort = 80", "8080"),
    "reader on account": ("  scope: modelsContainer\n", "  scope: storage\n", "scoped on a blob container"),
}


def _mutate(tmp_path: Path, src: Path, old: str, new: str) -> dict:
    text = src.read_text()
    assert old in text, f"mutation anchor not found: {old!r}"
    dst = tmp_path / src.name
    dst.write_text(text.replace(old, new, 1))
    return r.load_bicep(dst)


@pytest.mark.parametrize("name", sorted(FLEX_MUTATIONS))
def test_flex_checker_catches_mutation(tmp_path, name):
    old, new, expect = FLEX_MUTATIONS[name]
    violations = r.check_flex(_mutate(tmp_path, r.BICEP_FLEX, old, new))
    assert any(expect.lower() in x.lower() for x in violations), violations


@pytest.mark.parametrize("name", sorted(ACA_MUTATIONS))
def test_containerapp_checker_catches_mutation(tmp_path, name):
    old, new, expect = ACA_MUTATIONS[name]
    violations = r.check_containerapp(_mutate(tmp_path, r.BICEP_ACA, old, new))
    assert any(expect.lower() in x.lower() for x in violations), violations


def test_pycep_rejects_syntax_error(tmp_path):
    broken = tmp_path / "broken.bicep"
    broken.write_text(r.BICEP_FLEX.read_text().replace("resource plan ", "resource plan = ", 1))
    with pytest.raises(Exception):
        r.load_bicep(broken)
