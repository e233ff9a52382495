"""infra/Dockerfile.lambda: the Lambda image with or without the model, read as Docker reads
it (stages, build args, ENV, ENTRYPOINT). tests/functions/test_lambda.py runs its binary with
its environment."""

from __future__ import annotations

import re

import iac_rules as r

DOCKERFILE = r.REPO / "infra" / "Dockerfile.lambda"


def stages() -> dict[str, list[str]]:
    """Instructions per stage (continuation lines joined); the last stage is 'final'."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {"global": []}
    current = "global"
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [i for i, l in enumerate(lines) if l.startswith("FROM ")]
    for i, line in enumerate(lines):
        if line.startswith("FROM "):
            m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
            current = "final" if i == froms[-1] else (m.group(2) or f"stage{i}")
            out[current] = [line]
        else:
            out[current].append(line)
    return out


def env_of(instructions: list[str]) -> dict[str, str]:
    env = {}
    for line in instructions:
        if line.startswith("ENV "):
            for pair in line[4:].split():
                k, v = pair.split("=", 1)
                env[k] = v
    return env


def test_final_image_is_the_bootstrap_on_the_chosen_model_stage():
    st = stages()
    assert st["final"][0] == "FROM model-${MODEL_SOURCE}"
    assert "ARG MODEL_SOURCE=s3" in st["global"], "the default image takes its model from S3 (as the zip)"
    assert {"model-s3", "model-image"} <= set(st)
    assert st["model-s3"] == ["FROM scratch AS model-s3"], "the S3 variant carries no model"
    assert 'ENTRYPOINT ["/bootstrap"]' in st["final"]
    assert any("COPY --from=build /out/bootstrap /bootstrap" == l for l in st["final"])


def test_static_build_of_the_lambda_binary():
    build = " ".join(stages()["build"])
    assert "cargo build --profile container --locked -p bitnet-lambda" in build
    assert "! ldd /out/bootstrap" in build, "the build must prove the binary is static"


def test_model_inside_the_image_is_mapped_from_where_it_lies():
    st = stages()
    img = st["model-image"]
    assert any(re.fullmatch(r"COPY --from=model --chmod=0444 \$\{MODEL_FILE\} /opt/bitnet/model\.gguf", l) for l in img)
    assert env_of(img) == {"BITNET_MODEL": "/opt/bitnet/model.gguf"}
    final = env_of(st["final"])
    assert "BITNET_MODEL" not in final, "the S3 variant takes BITNET_MODEL from the function's environment"
    assert final["BITNET_CACHE_DIR"].startswith("/tmp/"), "Lambda's only writable path is /tmp"


def test_build_context_leaves_out_builds_models_and_git():
    ignore = (r.REPO / "infra" / "Dockerfile.lambda.dockerignore").read_text().split()
    assert {"target", ".git", "**/*.gguf", ".venv-iac"} <= set(ignore)


def test_no_auth_or_secret_in_the_image():
    for name, instructions in stages().items():
        env = env_of(instructions)
        for k in env:
            assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD|NO_AUTH", k), (name, k)
