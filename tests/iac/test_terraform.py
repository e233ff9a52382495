"""Terraform module and example: parsed with python-hcl2, key settings asserted."""

from __future__ import annotations

import re
import shutil
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
    assert var["reserved_concurrency"]["default"] is None


def test_s3_statement_is_get_object_on_model_only(module_tf):
    doc = module_tf["data"]["aws_iam_policy_document"]["this"]
    s3 = [st for st in r._statements(doc) if any(a.startswith("s3:") for a in st["actions"])]
    assert len(s3) == 1
    assert s3[0]["actions"] == ["s3:GetObject"]
    assert s3[0]["resources"] == ["${local.model_object}"]
    assert module_tf["locals"]["model_object"] == "${local.bucket_arn}/${var.model_key}"


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
    "old runtime": ('runtime          = "provided.al2023"', 'runtime          = "provided.al2"', "runtime"),
    "short timeout": ("default     = 900", "default     = 30", "timeout"),
    "small memory": ("default     = 4096", "default     = 1024", "memory_size"),
    "small tmp": ("default     = 3072", "default     = 512", "ephemeral_storage"),
    "s3 wildcard action": ('actions   = ["s3:GetObject"]', 'actions   = ["s3:*"]', "s3:*"),
    "extra s3 action": ('actions   = ["s3:GetObject"]', 'actions   = ["s3:GetObject", "s3:ListBucket"]', "only s3:GetObject"),
    "whole bucket": ("resources = [local.model_object]", 'resources = ["${local.bucket_arn}/*"]', "model object"),
    "public bucket": ("restrict_public_buckets = true", "restrict_public_buckets = false", "restrict_public_buckets"),
    "unversioned": ('status = "Enabled"\n  }\n}', 'status = "Suspended"\n  }\n}', "versioning"),
    "unencrypted": ('sse_algorithm = "aws:kms"', 'sse_algorithm = "none"', "encryption"),
    "no retention": ("retention_in_days = var.log_retention_days", "retention_in_days = 0", "retention"),
    "reserved warmers": ("reserved_concurrent_executions = var.reserved_concurrency",
                         "reserved_concurrent_executions = 5", "reserved_concurrent_executions"),
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
