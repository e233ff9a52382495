"""Terraform module and example: parsed with python-hcl2, key settings asserted; the
variables' validations also run for real in `terraform plan` (no provider needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import iac_rules as r


@pytest.fixture(scope="module")
def module_tf():
    return r.load_tf(r.TF_MODULE)


def test_module_satisfies_rules(module_tf):
    assert r.check_lambda_module(module_tf) == []


def test_example_calls_module(module_tf):
    assert r.check_example(r.load_tf(r.TF_EXAMPLE)) == []


def test_no_provisioned_concurrency_anywhere():
    assert r.check_no_provisioned_concurrency(r.REPO / "terraform") == []


def test_required_version_allows_cross_variable_validation():
    assert r.check_required_version(r.REPO / "terraform") == []


def test_concurrency_is_capped_by_default(module_tf):
    fn = module_tf["resource"]["aws_lambda_function"]["this"]
    assert fn["reserved_concurrent_executions"] == "${var.reserved_concurrency}"
    assert module_tf["variable"]["reserved_concurrency"]["default"] == 10
    assert r.check_concurrency_cap(module_tf) == []


def test_one_generation_slot_per_sandbox(module_tf):
    """Lambda hands a sandbox one invocation at a time: BITNET_PARALLEL=1, after
    extra_environment in the merge (later maps win), so that it cannot be raised there."""
    env = module_tf["locals"]["environment"]
    assert 'BITNET_PARALLEL = "1"' in env
    assert env.rindex("var.extra_environment") < env.index("BITNET_PARALLEL")
    assert r.check_lambda_parallel(module_tf) == []


def test_arm64_needs_acknowledgement(module_tf):
    assert module_tf["variable"]["allow_scalar_arm64"]["default"] is False
    assert module_tf["variable"]["architecture"]["default"] == "x86_64"
    assert r.check_arm64_acknowledgement(module_tf) == []


def test_auth_is_a_key_or_an_explicit_opt_in(module_tf):
    var = module_tf["variable"]
    assert var["api_key"]["default"] is None and var["api_key"]["sensitive"] is True
    assert var["allow_no_auth"]["default"] is False
    assert r.check_lambda_auth(module_tf) == []


def test_function_url_streams_with_iam_auth(module_tf):
    url = module_tf["resource"]["aws_lambda_function_url"]["this"]
    assert url["invoke_mode"] == "RESPONSE_STREAM"
    assert url["authorization_type"] == "${var.function_url_auth_type}"
    assert module_tf["variable"]["function_url_auth_type"]["default"] == "AWS_IAM"


def test_sizes(module_tf):
    var = module_tf["variable"]
    assert var["memory_size"]["default"] == 4096
    assert var["ephemeral_storage_size"]["default"] >= 2048
    assert var["timeout"]["default"] == 900
    assert var["reserved_concurrency"]["default"] == 10


def test_s3_statement_is_get_object_on_model_only(module_tf):
    doc = module_tf["data"]["aws_iam_policy_document"]["this"]
    s3 = [st for st in r._statements(doc) if any(a.startswith("s3:") for a in st["actions"])]
    assert len(s3) == 1
    assert s3[0]["actions"] == ["s3:GetObject"]
    assert s3[0]["resources"] == "${compact([local.model_object, local.embedding_object])}"
    assert module_tf["locals"]["model_object"] == '${local.model_from_s3 ? "${local.bucket_arn}/${var.model_key}" : null}'


def test_bucket_hardening(module_tf):
    res = module_tf["resource"]
    pab = res["aws_s3_bucket_public_access_block"]["models"]
    assert all(pab[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"))
    assert res["aws_s3_bucket_versioning"]["models"]["versioning_configuration"][0]["status"] == "Enabled"
    rule = res["aws_s3_bucket_server_side_encryption_configuration"]["models"]["rule"][0]
    assert rule["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == "aws:kms"


def test_skip_comments_have_reasons():
    assert r.check_skip_reasons(r.REPO / "terraform") == []


# ----------------------------------------------------------------------------------------
# The checker must be able to fail: each mutation of a copy of the module must be caught.

MUTATIONS = {
    "buffered url": ('invoke_mode        = "RESPONSE_STREAM"', 'invoke_mode        = "BUFFERED"', "invoke_mode"),
    "public by default": ('default     = "AWS_IAM"', 'default     = "NONE"', "authorization_type"),
    "old runtime": ('local.zip_package ? "provided.al2023" : null', 'local.zip_package ? "provided.al2" : null', "runtime"),
    "image ignored": ("image_uri        = local.zip_package ? null : var.image_uri", "image_uri        = null", "image_uri"),
    "zip only": ("package_type     = var.package_type", 'package_type     = "Zip"', "package_type"),
    "model uri over the image's": ("local.model_from_s3 ? { BITNET_MODEL = local.model_uri } : {},", "{ BITNET_MODEL = local.model_uri },", "BITNET_MODEL must be set only"),
    "s3 read with the model in the image": ("for_each = local.model_from_s3 ? [local.model_object] : []", "for_each = [local.model_object]", "S3 statement must exist only"),
    "short timeout": ("default     = 900", "default     = 30", "timeout"),
    "small memory": ("default     = 4096", "default     = 1024", "memory_size"),
    "small tmp": ("default     = 3072", "default     = 512", "ephemeral_storage"),
    "s3 wildcard action": ('actions   = ["s3:GetObject"]', 'actions   = ["s3:*"]', "s3:*"),
    "extra s3 action": ('actions   = ["s3:GetObject"]', 'actions   = ["s3:GetObject", "s3:ListBucket"]', "only s3:GetObject"),
    "whole bucket": ("resources = compact([local.model_object, local.embedding_object])", 'resources = ["${local.bucket_arn}/*"]', "model object"),
    "public bucket": ("restrict_public_buckets = true", "restrict_public_buckets = false", "restrict_public_buckets"),
    "unversioned": ('status = "Enabled"\n  }\n}', 'status = "Suspended"\n  }\n}', "versioning"),
    "unencrypted": ('sse_algorithm = "aws:kms"', 'sse_algorithm = "none"', "encryption"),
    "no retention": ("retention_in_days = var.log_retention_days", "retention_in_days = 0", "retention"),
    "reserved warmers": ("reserved_concurrent_executions = var.reserved_concurrency",
                         "reserved_concurrent_executions = 5", "reserved_concurrent_executions"),
    "uncapped by default": ("type        = number\n  default     = 10\n", "type        = number\n  default     = null\n",
                            "reserved_concurrency must default to a cap"),
    "large default cap": ("type        = number\n  default     = 10\n", "type        = number\n  default     = 1000\n",
                          "reserved_concurrency must default to a cap"),
    "cap not applied": ("reserved_concurrent_executions = var.reserved_concurrency",
                        "reserved_concurrent_executions = null", "reserved_concurrent_executions"),
    "arm64 acknowledged by default": ("default     = false\n  nullable    = false\n}",
                                      "default     = true\n  nullable    = false\n}", "allow_scalar_arm64"),
    "arm64 unguarded": ('condition     = var.architecture != "arm64" || var.allow_scalar_arm64',
                        "condition     = true", "allow_scalar_arm64"),
    "no auth by default": ("default     = false\n  nullable    = false\n\n  validation {\n    condition     = var.allow_no_auth",
                           "default     = true\n  nullable    = false\n\n  validation {\n    condition     = var.allow_no_auth",
                           "allow_no_auth must be a bool defaulting to false"),
    "auth not required": ("condition     = var.allow_no_auth || var.api_key != null", "condition     = true",
                          "require api_key or allow_no_auth"),
    "no-auth always": ('var.api_key == null && var.allow_no_auth ? { BITNET_ALLOW_NO_AUTH = "1" } : {}',
                       '{ BITNET_ALLOW_NO_AUTH = "1" }', "BITNET_ALLOW_NO_AUTH"),
    "key dropped": ("var.api_key == null ? {} : { API_KEY = var.api_key },", "", "API_KEY"),
    "key not sensitive": ("sensitive   = true", "sensitive   = false", "sensitive"),
    "public url without key": ('condition     = var.function_url_auth_type != "NONE" || var.api_key != null',
                               "condition     = true", "NONE"),
    "parallel dropped": ('      BITNET_PARALLEL = "1"\n', "", "BITNET_PARALLEL"),
    "parallel raised": ('BITNET_PARALLEL = "1"', 'BITNET_PARALLEL = "4"', "BITNET_PARALLEL"),
    "parallel overridable": ("    var.api_key == null ? {} : { API_KEY = var.api_key },\n",
                             "    var.extra_environment,\n    var.api_key == null ? {} : { API_KEY = var.api_key },\n",
                             "after var.extra_environment"),
    "provisioned": (None, 'resource "aws_lambda_provisioned_concurrency_config" "warm" {\n'
                          '  function_name                     = aws_lambda_function.this.function_name\n'
                          '  provisioned_concurrent_executions = 1\n'
                          '  qualifier                         = "1"\n}\n', "provisioned"),
}


def _mutated_copy(tmp_path: Path, old: str | None, new: str) -> Path:
    dst = tmp_path / "bitnet-lambda"
    shutil.copytree(r.TF_MODULE, dst)
    if old is None:
        (dst / "warmers.tf").write_text(new)
        return dst
    for tf in dst.glob("*.tf"):
        text = tf.read_text()
        if old in text:
            tf.write_text(text.replace(old, new, 1))
            return dst
    raise AssertionError(f"mutation anchor not found: {old!r}")


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_checker_catches_mutation(tmp_path, name):
    old, new, expect = MUTATIONS[name]
    broken = _mutated_copy(tmp_path, old, new)
    violations = r.check_lambda_module(r.load_tf(broken)) + r.check_no_provisioned_concurrency(broken)
    assert violations, f"mutation {name!r} was not caught"
    assert any(re.search(re.escape(expect), x, re.I) for x in violations), violations


# ----------------------------------------------------------------------------------------
# The validations themselves, run by terraform: a root module made of a copy of the module's
# variables.tf needs no provider, so `terraform plan` works offline and evaluates them.


def _terraform() -> str | None:
    candidates = [os.environ.get("TERRAFORM_BIN"), shutil.which("terraform"),
                  str(r.REPO / ".venv-iac" / "test" / "bin" / "terraform")]
    for c in candidates:
        if not c or not Path(c).exists():
            continue
        out = subprocess.run([c, "version"], capture_output=True, text=True, env=_tf_env()).stdout
        m = re.search(r"Terraform v(\d+)\.(\d+)", out)
        if m and (int(m.group(1)), int(m.group(2))) >= (1, 9):
            return c
    return None


def _tf_env(data_dir: Path | None = None) -> dict:
    env = dict(os.environ, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_INPUT="0")
    env.pop("TF_CLI_ARGS", None)
    if data_dir is not None:
        env["TF_DATA_DIR"] = str(data_dir / ".terraform")
    return env


@pytest.fixture(scope="module")
def variables_root(tmp_path_factory):
    tf = _terraform()
    if tf is None:
        pytest.skip("no terraform >= 1.9 (cross-variable validation) on PATH or in .venv-iac")
    d = tmp_path_factory.mktemp("tf-variables")
    shutil.copy(r.TF_MODULE / "variables.tf", d / "variables.tf")
    init = subprocess.run([tf, "init", "-backend=false", "-no-color"], cwd=d, capture_output=True, text=True,
                          env=_tf_env(d))
    assert init.returncode == 0, init.stdout + init.stderr

    def plan(*var_args: str) -> tuple[int, str]:
        argv = [tf, "plan", "-lock=false", "-no-color", "-refresh=false"]
        for a in var_args:
            argv += ["-var", a]
        p = subprocess.run(argv, cwd=d, capture_output=True, text=True, env=_tf_env(d))
        return p.returncode, " ".join((p.stdout + p.stderr).split())

    return plan


ECR_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/bitnet-lambda@sha256:" + "a" * 64


@pytest.mark.parametrize("args,ok,message", [
    ((), False, "Set api_key"),                                          # neither key nor opt-in
    (("allow_no_auth=true",), True, None),
    (("api_key=s3cret-key",), True, None),
    (("api_key=   ",), False, "must not be empty"),
    (("api_key=",), False, "must not be empty"),
    (("allow_no_auth=true", "function_url_auth_type=NONE"), False, "needs api_key"),
    (("api_key=k", "function_url_auth_type=NONE"), True, None),
    (("allow_no_auth=true", "architecture=arm64"), False, "scalar"),
    (("allow_no_auth=true", "architecture=arm64", "allow_scalar_arm64=true"), True, None),
    (("allow_no_auth=true", "reserved_concurrency=0"), False, "reserved_concurrency"),
    (("allow_no_auth=true", 'extra_environment={BITNET_ALLOW_NO_AUTH="1"}'), False, "extra_environment must not"),
    (("api_key=k", 'extra_environment={API_KEY="x"}'), False, "extra_environment must not"),
    # The container image option.
    (("allow_no_auth=true", "package_type=Image"), False, "Set image_uri exactly when"),
    (("allow_no_auth=true", f"image_uri={ECR_IMAGE}"), False, "Set image_uri exactly when"),
    (("allow_no_auth=true", "package_type=Image", f"image_uri={ECR_IMAGE}"), True, None),
    (("allow_no_auth=true", "package_type=Image", "image_uri=docker.io/library/bitnet:latest"), False, "must be an ECR image"),
    (("allow_no_auth=true", "model_in_image=true"), False, "model_in_image needs"),
    (("allow_no_auth=true", "package_type=Image", f"image_uri={ECR_IMAGE}", "model_in_image=true", "ephemeral_storage_size=512"), True, None),
    (("allow_no_auth=true", "ephemeral_storage_size=512"), False, "ephemeral_storage_size"),
    (("allow_no_auth=true", "package_type=zip"), False, "package_type must be"),
    # The embedding model beside the chat model.
    (("allow_no_auth=true", "embedding_model_key=models/bitnet-embedding-0.6b-i2_s.gguf"), True, None),
    (("allow_no_auth=true", "embedding_model_key=models/*.gguf"), False, "single object key"),
    (("allow_no_auth=true", "embedding_model_key=models/bitnet-2b4t-prepared.gguf"), False, "other than model_key"),
    (("allow_no_auth=true", "package_type=Image", f"image_uri={ECR_IMAGE}", "model_in_image=true",
      "embedding_model_key=e.gguf"), False, "needs the model bucket"),
    (("allow_no_auth=true", "embedding_model_sha256=ABC"), False, "embedding_model_sha256 must"),
])
def test_validations_in_terraform_plan(variables_root, args, ok, message):
    rc, out = variables_root(*args)
    if ok:
        assert rc == 0, out
    else:
        assert rc != 0, f"plan with {args} should fail: {out}"
        assert "Invalid value for variable" in out and message in out, out
