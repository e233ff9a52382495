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


def test_flex_parallel_and_per_instance_concurrency(flex):
    """BITNET_PARALLEL comes from `parallel` (default 4); the host's perInstanceConcurrency
    defaults to the same, so each request gets a slot at once and more load scales out."""
    assert flex["parameters"]["parallel"]["default"] == 4
    assert flex["parameters"]["httpPerInstanceConcurrency"]["default"] == "parallel"
    assert r._resolve(flex, "httpPerInstanceConcurrency") == 4
    props = flex["resources"]["functionApp"]["config"]["properties"]
    http = props["functionAppConfig"]["scaleAndConcurrency"]["triggers"]["http"]
    assert http["perInstanceConcurrency"] == "httpPerInstanceConcurrency"
    settings = r._settings(flex, props["siteConfig"]["appSettings"])
    assert r._string_of(settings["BITNET_PARALLEL"]) == "parallel"
    assert r.check_flex_parallel(flex) == []


def test_containerapp_parallel_and_concurrent_requests(aca):
    assert aca["parameters"]["parallel"]["default"] == 4
    assert aca["parameters"]["httpConcurrency"]["default"] == "parallel"
    template = aca["resources"]["containerApp"]["config"]["properties"]["template"]
    [rule] = template["scale"]["rules"]
    assert r._string_of(rule["http"]["metadata"]["concurrentRequests"]) == "httpConcurrency"
    env = r._settings(aca, template["containers"][0]["env"])
    assert r._string_of(env["BITNET_PARALLEL"]) == "parallel"
    assert r.check_containerapp_parallel(aca) == []


def test_models_reader_role(flex, aca):
    for doc in (flex, aca):
        body = doc["resources"]["modelsReader"]["config"]
        assert body["scope"] == "modelsContainer"
        assert doc["resources"]["modelsContainer"]["config"]["name"] == "modelsContainerName"
        assert doc["variables"]["modelsContainerName"]["value"] == "models"
        assert r._role_id(doc, body) == r.STORAGE_BLOB_DATA_READER


def test_runtime_identity_cannot_write_the_deployment_container(flex):
    """The identity the handler and the host run as has no write role on the package container
    (or anything containing it); the package is written and read as a separate identity."""
    settings = r._settings(flex, flex["resources"]["functionApp"]["config"]["properties"]["siteConfig"]["appSettings"])
    runtime = r._root_symbol(settings["AZURE_CLIENT_ID"])
    assert runtime == "identity" == r._root_symbol(settings["AzureWebJobsStorage__clientId"])
    auth = flex["resources"]["functionApp"]["config"]["properties"]["functionAppConfig"]["deployment"]["storage"]["authentication"]
    assert r._root_symbol(auth["userAssignedIdentityResourceId"]) == "deployIdentity"
    containers = r._container_names(flex)
    runtime_grants = []
    for sym, res in r._resources(flex, "Microsoft.Authorization/roleAssignments").items():
        body = r._body(res)
        if r._root_symbol(body["properties"]["principalId"]) == runtime:
            runtime_grants.append((r._role_id(flex, body), containers.get(r._scope_symbol(body))))
    assert runtime_grants, "the runtime identity must at least read the models"
    for role, names in runtime_grants:
        assert names is not None, "every grant of the runtime identity is scoped on one container"
        if role in r.WRITE_ROLES:
            assert "app-package" not in names, (role, names)
    assert r.check_flex_identities(flex) == []


def test_flex_auth_is_a_key_or_an_explicit_opt_in(flex):
    assert flex["parameters"]["apiKey"]["default"] is None  # required
    assert flex["parameters"]["allowNoAuth"]["default"] is False
    assert r.check_flex_auth(flex) == []


def test_containerapp_always_has_a_key(aca):
    assert aca["parameters"]["apiKey"]["default"] is None
    assert "allowNoAuth" not in aca["parameters"]
    assert r.check_containerapp_auth(aca) == []


def test_containerapp_probes_text():
    text = r.BICEP_ACA.read_text()
    assert re.search(r"type: 'Liveness'\s+httpGet: \{\s+path: '/health'", text)
    assert re.search(r"type: 'Readiness'\s+httpGet: \{\s+path: '/ready'", text)
    assert re.search(r"var minReplicas = 0\b", text)


def test_skip_comments_have_reasons():
    assert r.check_skip_reasons(r.REPO / "bicep") == []


# ----------------------------------------------------------------------------------------
# The checker must be able to fail: each mutation of a copy must be caught.

OWNER_ON_ACCOUNT = """resource runtimeOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: storage
  name: guid(storage.id, identity.id, 'owner')
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b')
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

"""

PARALLEL_SETTING = "  {\n    name: 'BITNET_PARALLEL'\n    value: string(parallel)\n  }\n"

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
    "runtime writes package": ("    principalId: deployIdentity.properties.principalId\n",
                               "    principalId: identity.properties.principalId\n", "runtime identity"),
    "package as runtime": ("userAssignedIdentityResourceId: deployIdentity.id", "userAssignedIdentityResourceId: identity.id",
                           "authenticates with the runtime identity"),
    "runtime owner on account": ("output functionAppName", OWNER_ON_ACCOUNT + "output functionAppName",
                                 "covers the deployment container"),
    "deploy identity on account": ("  scope: deploymentContainer\n", "  scope: storage\n", "deployment identity may only hold"),
    "deploy identity unattached": ("      '${deployIdentity.id}': {}\n", "", "exactly the runtime and deployment identities"),
    "no-auth by default": ("param allowNoAuth bool = false", "param allowNoAuth bool = true", "allowNoAuth must be a bool"),
    "keyless by default": ("@secure()\nparam apiKey string\n", "@secure()\nparam apiKey string = ''\n", "required parameter"),
    "key not secure": ("@secure()\nparam apiKey string\n", "param apiKey string\n", "@secure"),
    "no-auth always": ("(empty(apiKey) && allowNoAuth) ? [", "true ? [", "BITNET_ALLOW_NO_AUTH may only"),
    "no-auth dropped": ("apiKeySetting, noAuthSetting)", "apiKeySetting)", "must set BITNET_ALLOW_NO_AUTH"),
    "one request per instance": ("param httpPerInstanceConcurrency int = parallel", "param httpPerInstanceConcurrency int = 1",
                                 "perInstanceConcurrency"),
    "fixed per-instance concurrency": ("perInstanceConcurrency: httpPerInstanceConcurrency", "perInstanceConcurrency: 16",
                                       "perInstanceConcurrency"),
    "parallel not passed": (PARALLEL_SETTING, "", "BITNET_PARALLEL"),
    "parallel hard-coded": ("value: string(parallel)", "value: '8'", "BITNET_PARALLEL"),
    "parallel conditional": ([(PARALLEL_SETTING + "]\n", "]\n\nvar parallelSetting = parallel == 4 ? [] : [\n" + PARALLEL_SETTING + "]\n"),
                              ("noAuthSetting)", "noAuthSetting, parallelSetting)")], None, "always be set"),
    "parallel above the server's limit": ("@maxValue(64)\nparam parallel", "@maxValue(256)\nparam parallel", "maxValue(64)"),
    "parallel default": ("param parallel int = 4", "param parallel int = 1", "defaulting to 4"),
    "no parallel": ("param parallel int = 4", "param parallelism int = 4", "parallel"),
}

ACA_MUTATIONS = {
    "min one": ("var minReplicas = 0", "var minReplicas = 1", "minReplicas"),
    "ready on root": ("path: '/ready'", "path: '/'", "Readiness"),
    "no liveness": ("type: 'Liveness'", "type: 'Startup'", "Liveness"),
    "old shape": ("param cpu string = '2.0'", "param cpu string = '0.25'", "cpu"),
    "small memory": ("param memory string = '4Gi'", "param memory string = '0.5Gi'", "memory"),
    "wrong port": ("var targetPort = 8080", "var targetPort = 80", "8080"),
    "reader on account": ("  scope: modelsContainer\n", "  scope: storage\n", "scoped on a blob container"),
    "optional key": ("@minLength(16)\nparam apiKey string\n", "param apiKey string = ''\n", "required parameter"),
    "short key": ("@minLength(16)\nparam apiKey", "@minLength(4)\nparam apiKey", "minLength"),
    "conditional key": ("var apiKeyEnv = [", "var apiKeyEnv = empty(apiKey) ? [] : [", "API_KEY must always"),
    "no-auth": ("var baseEnv = [\n", "var baseEnv = [\n  {\n    name: 'BITNET_ALLOW_NO_AUTH'\n    value: '1'\n  }\n",
                "BITNET_ALLOW_NO_AUTH"),
    "one request per replica": ("param httpConcurrency int = parallel", "param httpConcurrency int = 1", "concurrentRequests"),
    "fixed concurrent requests": ("concurrentRequests: string(httpConcurrency)", "concurrentRequests: '10'",
                                  "concurrentRequests"),
    "parallel not passed": (PARALLEL_SETTING, "", "BITNET_PARALLEL"),
    "parallel hard-coded": ("value: string(parallel)", "value: '8'", "BITNET_PARALLEL"),
    "parallel unbounded": ("@maxValue(64)\nparam parallel", "param parallel", "maxValue(64)"),
}


def _mutate(tmp_path: Path, src: Path, old: str | list[tuple[str, str]], new: str | None) -> dict:
    """Replace `old` by `new` once in a copy of `src`, or each (old, new) pair of a list."""
    text = src.read_text()
    for o, n in (old if isinstance(old, list) else [(old, new)]):
        assert o in text, f"mutation anchor not found: {o!r}"
        text = text.replace(o, n, 1)
    dst = tmp_path / src.name
    dst.write_text(text)
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


@pytest.mark.parametrize("which", ["flex", "aca"])
def test_an_embedding_model_is_an_optional_blob_beside_the_chat_model(which, flex, aca):
    """`embeddingModelBlobName` (default empty: none) sets BITNET_EMBEDDING_MODEL to a blob of
    the models container, the one container the runtime identity reads; its sha256 goes to
    BITNET_EMBEDDING_MODEL_SHA256 only when both are given."""
    doc, path = (flex, r.BICEP_FLEX) if which == "flex" else (aca, r.BICEP_ACA)
    assert doc["parameters"]["embeddingModelBlobName"]["default"] == ""
    assert doc["parameters"]["embeddingModelSha256"]["default"] == ""
    if which == "flex":
        props = doc["resources"]["functionApp"]["config"]["properties"]
        settings = r._settings(doc, props["siteConfig"]["appSettings"])
    else:
        template = doc["resources"]["containerApp"]["config"]["properties"]["template"]
        settings = r._settings(doc, template["containers"][0]["env"])
    assert settings["BITNET_EMBEDDING_MODEL"] == "embeddingModelUri"
    assert settings["BITNET_EMBEDDING_MODEL_SHA256"] == "embeddingModelSha256"
    text = path.read_text()
    uri = re.search(r"var embeddingModelUri = (.*)", text).group(1)
    assert uri.startswith("empty(embeddingModelBlobName) ? '' : ")
    assert "/${modelsContainerName}/${embeddingModelBlobName}'" in uri
    assert re.search(r"\(empty\(embeddingModelBlobName\) \|\| empty\(embeddingModelSha256\)\) \? \[\] :", text)
    assert re.search(r"output embeddingModelUri string = embeddingModelUri", text)
