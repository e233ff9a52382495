"""infra/docker-compose.yml and infra/Dockerfile: no-auth is never a default.

The server refuses to start without API_KEY unless BITNET_ALLOW_NO_AUTH=1. The compose file
passes both through from the caller's environment, and must not supply either itself; these
tests interpolate it the way compose does (`${VAR}`, `${VAR:-default}`, `${VAR-default}`,
`${VAR:?message}`, `${VAR?message}`) for a few caller environments.
"""

from __future__ import annotations

import re
import sys

import pytest
import yaml

import iac_rules as r

COMPOSE = r.REPO / "infra" / "docker-compose.yml"
DOCKERFILE = r.REPO / "infra" / "Dockerfile"
TRUTHY = {"1", "true", "yes", "on"}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class Refused(Exception):
    """compose itself refuses to start (`${VAR:?message}`)."""


def interpolate(value: str, env: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        val = env.get(name)
        missing = val is None or (op is not None and op.startswith(":") and val == "")
        if op in (":-", "-"):
            return arg if missing else val
        if op in (":?", "?"):
            if missing:
                raise Refused(arg or name)
            return val
        return val or ""

    return _VAR.sub(one, str(value))


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict]:
    return load_compose()["services"]


def server_env(service: dict, caller_env: dict[str, str]) -> dict[str, str]:
    return {k: interpolate(v, caller_env) for k, v in (service.get("environment") or {}).items()}


def auth_of(env: dict[str, str]) -> str:
    """What the server does with this environment: 'key', 'no-auth' or 'refuses'."""
    if env.get("API_KEY", "").strip():
        return "key"
    if env.get("BITNET_ALLOW_NO_AUTH", "").strip().lower() in TRUTHY:
        return "no-auth"
    return "refuses"


def test_compose_has_the_two_profiles():
    assert {"bitnet-volume", "bitnet-download"} <= set(services())


def services_of(profile: str) -> set[str]:
    """What `docker compose --profile P up` starts: services with that profile, or none."""
    return {n for n, s in services().items() if not s.get("profiles") or profile in s["profiles"]}


@pytest.mark.parametrize("profile,expect", [
    ("volume", {"bitnet-volume"}),
    ("download", {"bitnet-download"}),
    # The old image's profile names keep working.
    ("volume-mount", {"bitnet-volume"}),
    ("full-stack", {"bitnet-volume", "bitnet-embed", "rag", "neo4j"}),
])
def test_profiles_old_and_new(profile, expect):
    assert services_of(profile) == expect


def test_every_setup_interpolates_without_neo4j_settings():
    """compose interpolates the whole file whatever the profile: nothing may require a
    variable that only the full-stack profile needs."""
    for name, svc in services().items():
        for v in (svc.get("environment") or {}).values():
            interpolate(v, {})
        for p in svc.get("ports") or []:
            interpolate(p, {})


def test_full_stack_neo4j_has_no_default_password_and_stays_on_loopback():
    neo = services()["neo4j"]
    auth = str(neo["environment"]["NEO4J_AUTH"])
    assert interpolate(auth, {}) == "neo4j/", "no password unless the caller sets NEO4J_PASSWORD"
    assert interpolate(auth, {"NEO4J_PASSWORD": "pw-from-caller"}) == "neo4j/pw-from-caller"
    for p in neo["ports"]:
        assert interpolate(p, {}).startswith("127.0.0.1:"), p
    # The application finds the model server by the name the old file used for its host.
    assert "bitnet" in services()["bitnet-volume"]["networks"]["default"]["aliases"]


def test_old_port_can_be_kept():
    """The old image listened on 8001; BITNET_PORT=8001 publishes the new one there."""
    ports = load_compose()["x-bitnet"]["ports"]
    assert [interpolate(p, {"BITNET_PORT": "8001"}) for p in ports] == ["127.0.0.1:8001:8080"]


@pytest.mark.parametrize("name", ["bitnet-volume", "bitnet-download", "bitnet-embed"])
@pytest.mark.parametrize("caller,expect", [
    ({}, "refuses"),                                     # nothing set: no silent no-auth
    ({"API_KEY": ""}, "refuses"),
    ({"BITNET_ALLOW_NO_AUTH": "0"}, "refuses"),
    ({"API_KEY": "s3cret"}, "key"),
    ({"BITNET_ALLOW_NO_AUTH": "1"}, "no-auth"),          # the explicit opt-in
    ({"API_KEY": "s3cret", "BITNET_ALLOW_NO_AUTH": "1"}, "key"),
])
def test_auth_comes_from_the_caller_only(name, caller, expect):
    svc = services()[name]
    try:
        env = server_env(svc, caller)
    except Refused:
        got = "refuses"
    else:
        got = auth_of(env)
        if caller.get("API_KEY"):
            assert env["API_KEY"] == caller["API_KEY"]
    assert got == expect, (name, caller, svc.get("environment"))


@pytest.mark.parametrize("name", ["bitnet-volume", "bitnet-download", "bitnet-embed"])
def test_no_auth_setting_has_no_default(name):
    env = services()[name].get("environment") or {}
    assert "API_KEY" in env, "API_KEY must be passed through from the caller"
    for var in ("API_KEY", "BITNET_ALLOW_NO_AUTH"):
        raw = str(env.get(var, ""))
        for m in _VAR.finditer(raw):
            if m.group(2) in (":-", "-"):
                assert m.group(3) == "", f"{name}: {var} defaults to {m.group(3)!r}"
        assert _VAR.sub("", raw) == "", f"{name}: {var} is hard-coded: {raw!r}"


@pytest.mark.parametrize("name", ["bitnet-volume", "bitnet-download", "bitnet-embed"])
def test_published_on_loopback_only(name):
    svc = services()[name]
    ports = svc.get("ports") or load_compose()["x-bitnet"]["ports"]
    for p in ports:
        assert interpolate(p, {}).startswith("127.0.0.1:"), p


@pytest.mark.parametrize("name", ["bitnet-volume", "bitnet-download", "bitnet-embed"])
@pytest.mark.parametrize("caller,parallel,prefix", [
    ({}, "4", ""),                                       # the server's default slots; prefix cache derived
    ({"BITNET_PARALLEL": ""}, "4", ""),
    ({"BITNET_PARALLEL": "8", "BITNET_PREFIX_CACHE_MB": "0"}, "8", "0"),
    ({"BITNET_PREFIX_CACHE_MB": "256"}, "4", "256"),
])
def test_concurrency_settings_come_from_the_caller(name, caller, parallel, prefix):
    """BITNET_PARALLEL defaults to 4; BITNET_PREFIX_CACHE_MB is passed through and blank when
    unset (the server ignores blank variables: the derived default)."""
    env = server_env(services()[name], caller)
    assert env["BITNET_PARALLEL"] == parallel
    assert env["BITNET_PREFIX_CACHE_MB"] == prefix


def test_checker_catches_the_old_default(tmp_path, monkeypatch):
    """The compose file as it was (BITNET_ALLOW_NO_AUTH defaulting to 1) must fail the checks."""
    old = COMPOSE.read_text().replace("${BITNET_ALLOW_NO_AUTH:-}", "${BITNET_ALLOW_NO_AUTH:-1}")
    assert old != COMPOSE.read_text()
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(old)
    monkeypatch.setattr(sys.modules[__name__], "COMPOSE", bad)
    with pytest.raises(AssertionError):
        test_auth_comes_from_the_caller_only("bitnet-volume", {}, "refuses")
    with pytest.raises(AssertionError):
        test_no_auth_setting_has_no_default("bitnet-download")


def test_image_sets_no_auth_default():
    """The image's ENV carries neither setting: `docker run` needs -e API_KEY (or the opt-in)."""
    env_lines = " ".join(l for l in DOCKERFILE.read_text().replace("\\\n", " ").splitlines() if l.startswith("ENV "))
    assert "BITNET_HOST=0.0.0.0" in env_lines
    assert "API_KEY" not in env_lines and "BITNET_ALLOW_NO_AUTH" not in env_lines, env_lines


def test_full_stack_rag_reaches_both_models_and_neo4j_without_defaults():
    """The example's service: both servers by their compose names, the caller's key and
    Neo4j password only (no defaults), the example folder read-only."""
    svc = services()["rag"]
    env = server_env(svc, {})
    assert env["BITNET_CHAT_URL"] == "http://bitnet:8080/v1"
    assert env["BITNET_EMBED_URL"] == "http://bitnet-embed:8080/v1"
    assert env["API_KEY"] == "" and env["NEO4J_PASSWORD"] == ""
    assert server_env(svc, {"NEO4J_PASSWORD": "pw"})["NEO4J_PASSWORD"] == "pw"
    app = [v for v in svc["volumes"] if v["target"] == "/app"][0]
    assert app["read_only"] and (COMPOSE.parent / app["source"] / "rag.py").is_file()
    # The chat server answers to `bitnet` in the full stack.
    assert "bitnet" in services()["bitnet-volume"]["networks"]["default"]["aliases"]
    embed = server_env(services()["bitnet-embed"], {})
    assert embed["BITNET_MODEL"] == "/models/bitnet-embedding-0.6b-i2_s.gguf"
