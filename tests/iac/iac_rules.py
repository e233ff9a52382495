"""Static rules for the deployment code, checked without any cloud or provider.

`terraform validate` and the Bicep CLI cannot run in this offline workplace, so
these checks parse the sources (python-hcl2 for Terraform, pycep for Bicep) and
assert the settings the deployment depends on. Each `check_*` function returns
a list of violations (empty = good), so tests can also prove that a broken copy
is caught.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TF_MODULE = REPO / "terraform" / "modules" / "bitnet-lambda"
TF_EXAMPLE = REPO / "terraform" / "examples" / "basic"
BICEP_FLEX = REPO / "bicep" / "main.bicep"
BICEP_ACA = REPO / "bicep" / "containerapp.bicep"

STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
# Roles that can write blobs in a container they cover (or grant themselves that right).
WRITE_ROLES = {
    STORAGE_BLOB_DATA_CONTRIBUTOR: "Storage Blob Data Contributor",
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "17d1049b-9a84-46fb-8f53-869881c3d3ab": "Storage Account Contributor",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "f58310d9-a9f6-439a-9e8d-f62e7b41a168": "Role Based Access Control Administrator",
}

# --------------------------------------------------------------------------- Terraform


def _unquote(key: str) -> str:
    if len(key) >= 2 and key[0] == key[-1] == '"':
        return key[1:-1]
    return key


def _clean(node: Any) -> Any:
    if isinstance(node, dict):
        return {_unquote(k): _clean(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def load_tf(directory: Path) -> dict[str, Any]:
    """Merge every .tf file of a directory into
    {"resource": {type: {name: body}}, "data": {...}, "variable": {name: body},
     "output": {...}, "locals": {...}, "module": {...}}."""
    import hcl2

    opts = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
    merged: dict[str, Any] = {"resource": {}, "data": {}, "variable": {}, "output": {}, "locals": {}, "module": {}}
    for tf in sorted(Path(directory).glob("*.tf")):
        with tf.open() as f:
            doc = _clean(hcl2.load(f, serialization_options=opts))
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    merged[kind].setdefault(rtype, {}).update(named)
        for kind in ("variable", "output", "module"):
            for block in doc.get(kind, []):
                merged[kind].update(block)
        for block in doc.get("locals", []):
            merged["locals"].update(block)
    return merged


def _var_default(tf: dict, expr: Any) -> Any:
    """Value of a literal, or the default of `${var.x}`; KeyError if neither."""
    if isinstance(expr, str):
        m = re.fullmatch(r"\$\{var\.([A-Za-z0-9_]+)\}", expr)
        if m:
            return tf["variable"][m.group(1)].get("default")
    return expr


def _first(block: Any) -> dict:
    if isinstance(block, list):
        return block[0] if block else {}
    return block or {}


def _statements(doc: dict) -> list[dict]:
    out = []
    for st in doc.get("statement", []) or []:
        out.append(st)
    for dyn in doc.get("dynamic", []) or []:
        for name, body in dyn.items():
            if name == "statement":
                out.append({**_first(body.get("content")), "__for_each__": body.get("for_each")})
    return out


def check_package_type(tf: dict, fn: dict) -> list[str]:
    """Zip by default (provided.al2023, handler bootstrap, the cargo lambda zip), Image as an
    option (image_uri, no runtime or handler), and the model in the image only with Image."""
    v = []
    if fn.get("package_type") != "${var.package_type}" or _var_default(tf, fn.get("package_type")) != "Zip":
        v.append(f"package_type must come from a variable defaulting to Zip, is {fn.get('package_type')!r}")
    zip_if = "${local.zip_package ? "
    for attr, want in (("runtime", '"provided.al2023" : null}'), ("handler", '"bootstrap" : null}'),
                       ("filename", "var.lambda_zip_path : null}"), ("image_uri", "null : var.image_uri}")):
        if str(fn.get(attr)) != zip_if + want:
            v.append(f"{attr} must be {zip_if + want!r} (Zip/Image switch), is {fn.get(attr)!r}")
    if str(tf["locals"].get("zip_package")) != '${var.package_type == "Zip"}':
        v.append("local.zip_package must be var.package_type == \"Zip\"")
    zip_default = tf["variable"].get("lambda_zip_path", {}).get("default")
    if zip_default != "target/lambda/bootstrap/bootstrap.zip":
        v.append(f"zip path default must be target/lambda/bootstrap/bootstrap.zip, is {zip_default!r}")
    for var, needle in (("package_type", '["Zip", "Image"]'), ("image_uri", "dkr"), ("model_in_image", 'var.package_type == "Image"')):
        if needle not in str(tf["variable"].get(var, {}).get("validation", "")):
            v.append(f"variable {var} must be validated ({needle})")
    if tf["variable"].get("model_in_image", {}).get("default") is not False:
        v.append("model_in_image must default to false")
    if str(tf["locals"].get("model_from_s3")) != "${!var.model_in_image}":
        v.append("local.model_from_s3 must be !var.model_in_image")
    return v


def check_lambda_module(tf: dict) -> list[str]:
    v: list[str] = []
    res = tf["resource"]

    fns = res.get("aws_lambda_function", {})
    if len(fns) != 1:
        return [f"expected exactly one aws_lambda_function, found {len(fns)}"]
    fn = next(iter(fns.values()))

    v += check_package_type(tf, fn)
    if _var_default(tf, fn.get("timeout")) != 900:
        v.append(f"timeout default must be 900, is {_var_default(tf, fn.get('timeout'))!r}")
    mem = _var_default(tf, fn.get("memory_size"))
    if mem != 4096:
        v.append(f"memory_size default must be 4096, is {mem!r}")
    eph = _var_default(tf, _first(fn.get("ephemeral_storage")).get("size"))
    if not isinstance(eph, int) or eph < 2048:
        v.append(f"ephemeral_storage size default must be >= 2048 MB, is {eph!r}")
    arch = fn.get("architectures", [None])
    arch_default = _var_default(tf, arch[0]) if arch else None
    if arch_default != "x86_64":
        v.append(f"architecture default must be x86_64, is {arch_default!r}")
    arch_var = tf["variable"].get("architecture", {})
    if "arm64" not in str(arch_var.get("validation", "")):
        v.append("architecture variable must allow arm64")
    v += check_arm64_acknowledgement(tf)

    env_expr = str(tf["locals"].get("environment", ""))
    env_block = str(_first(fn.get("environment")).get("variables", ""))
    if "local.environment" not in env_block:
        v.append("function environment must come from local.environment")
    for name in ("BITNET_MODEL", "BITNET_MODEL_SHA256", "BITNET_THREADS", "BITNET_CACHE_DIR"):
        if not re.search(rf"\b{name}\s*=", env_expr):
            v.append(f"environment must set {name}")
    if "s3://" not in str(tf["locals"].get("model_uri", "")):
        v.append("BITNET_MODEL must be an s3:// URI")
    if not re.search(r"local\.model_from_s3\s*\?\s*\{\s*BITNET_MODEL\s*=\s*local\.model_uri", env_expr):
        v.append("BITNET_MODEL must be set only when the model comes from S3 (the image's ENV sets it otherwise)")

    # Zero cost at rest: no provisioned concurrency, no warmers.
    for bad in ("aws_lambda_provisioned_concurrency_config", "aws_cloudwatch_event_rule", "aws_scheduler_schedule"):
        if res.get(bad):
            v.append(f"{bad} must not exist (costs or warms while idle)")
    v += check_concurrency_cap(tf)
    v += check_lambda_parallel(tf)
    v += check_lambda_auth(tf)

    # Function URL.
    urls = res.get("aws_lambda_function_url", {})
    if len(urls) != 1:
        v.append(f"expected exactly one aws_lambda_function_url, found {len(urls)}")
    else:
        url = next(iter(urls.values()))
        if url.get("invoke_mode") != "RESPONSE_STREAM":
            v.append(f"function URL invoke_mode must be RESPONSE_STREAM, is {url.get('invoke_mode')!r}")
        auth = _var_default(tf, url.get("authorization_type"))
        if auth != "AWS_IAM":
            v.append(f"function URL authorization_type must default to AWS_IAM, is {auth!r}")
        if "var.cors" not in str(url.get("dynamic", "")):
            v.append("function URL CORS must come from var.cors")

    # IAM: S3 access is exactly s3:GetObject on the one model object.
    docs = tf["data"].get("aws_iam_policy_document", {})
    role_policies = res.get("aws_iam_role_policy", {})
    attached = {m.group(1) for rp in role_policies.values()
                for m in [re.search(r"data\.aws_iam_policy_document\.([A-Za-z0-9_]+)\.json", str(rp.get("policy")))] if m}
    if res.get("aws_iam_role_policy_attachment") or res.get("aws_iam_policy"):
        v.append("the role must carry only its inline least-privilege policy (no managed policy attachments)")
    if not attached:
        v.append("no inline role policy built from an aws_iam_policy_document")
    s3_allow = []
    for name in attached:
        for st in _statements(docs.get(name, {})):
            if st.get("effect", "Allow") != "Allow":
                continue
            actions = st.get("actions", [])
            for a in actions:
                if a == "*" or a.endswith(":*") or "*" in a:
                    v.append(f"wildcard action {a!r} in policy statement {st.get('sid')!r}")
            if any(a.lower().startswith("s3:") for a in actions):
                s3_allow.append(st)
            for r in st.get("resources", []):
                if r == "*" and not all(a.startswith("xray:") for a in actions):
                    v.append(f"resource '*' outside the X-Ray statement: {st.get('sid')!r}")
    if len(s3_allow) != 1:
        v.append(f"expected exactly one S3 allow statement, found {len(s3_allow)}")
    else:
        st = s3_allow[0]
        if st.get("actions") != ["s3:GetObject"]:
            v.append(f"S3 statement must allow only s3:GetObject, allows {st.get('actions')!r}")
        if "local.model_from_s3" not in str(st.get("__for_each__", "local.model_from_s3")):
            v.append("the S3 statement must exist only when the model comes from S3")
        if st.get("resources") != "${compact([local.model_object, local.embedding_object])}":
            v.append(f"S3 statement must name only the model object (and the embedding model's), "
                     f"names {st.get('resources')!r}")
        obj = str(tf["locals"].get("model_object", ""))
        if "*" in obj or "var.model_key" not in obj:
            v.append(f"local.model_object must be <bucket ARN>/<model key>, is {obj!r}")
        emb = str(tf["locals"].get("embedding_object", ""))
        if "*" in emb or "var.embedding_model_key" not in emb:
            v.append(f"local.embedding_object must be <bucket ARN>/<embedding model key>, is {emb!r}")
    key_var = tf["variable"].get("model_key", {})
    if "[*?]" not in str(key_var.get("validation", "")):
        v.append("model_key must be validated to contain no wildcard")

    # Logs: own log group, retention set.
    groups = res.get("aws_cloudwatch_log_group", {})
    if len(groups) != 1:
        v.append("expected one aws_cloudwatch_log_group")
    else:
        lg = next(iter(groups.values()))
        ret = _var_default(tf, lg.get("retention_in_days"))
        if not isinstance(ret, int) or ret <= 0:
            v.append(f"log group retention must be set, is {ret!r}")

    # Bucket: public access blocked, versioned, encrypted.
    pab = res.get("aws_s3_bucket_public_access_block", {})
    if len(pab) != 1:
        v.append("expected one aws_s3_bucket_public_access_block")
    else:
        body = next(iter(pab.values()))
        for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
            if body.get(flag) is not True:
                v.append(f"public access block {flag} must be true, is {body.get(flag)!r}")
    ver = res.get("aws_s3_bucket_versioning", {})
    if len(ver) != 1 or _first(next(iter(ver.values())).get("versioning_configuration")).get("status") != "Enabled":
        v.append("bucket versioning must be Enabled")
    sse = res.get("aws_s3_bucket_server_side_encryption_configuration", {})
    algo = None
    if len(sse) == 1:
        rule = _first(next(iter(sse.values())).get("rule"))
        algo = _first(rule.get("apply_server_side_encryption_by_default")).get("sse_algorithm")
    if algo not in ("aws:kms", "aws:kms:dsse", "AES256"):
        v.append(f"bucket must have default encryption, sse_algorithm is {algo!r}")

    for out in ("function_url", "function_name", "bucket"):
        if out not in tf["output"]:
            v.append(f"missing output {out}")
    return v


# Each cold start downloads the 1.2 GB model: the default cap must exist and be small.
MAX_DEFAULT_CONCURRENCY = 20


def check_concurrency_cap(tf: dict) -> list[str]:
    """reserved_concurrent_executions comes from var.reserved_concurrency, whose default is a
    small positive cap (not null = uncapped, not 0 = disabled, not -1 = unreserved)."""
    v: list[str] = []
    fns = tf["resource"].get("aws_lambda_function", {})
    if len(fns) != 1:
        return ["expected exactly one aws_lambda_function"]
    fn = next(iter(fns.values()))
    rce = fn.get("reserved_concurrent_executions")
    if rce != "${var.reserved_concurrency}":
        v.append(f"reserved_concurrent_executions must be var.reserved_concurrency (the cap), is {rce!r}")
    var = tf["variable"].get("reserved_concurrency")
    if var is None:
        return v + ["variable reserved_concurrency (concurrency cap) is missing"]
    default = var.get("default")
    if isinstance(default, bool) or not isinstance(default, int) or not 1 <= default <= MAX_DEFAULT_CONCURRENCY:
        v.append(f"reserved_concurrency must default to a cap between 1 and {MAX_DEFAULT_CONCURRENCY} "
                 f"(each cold start downloads the model), is {default!r}")
    if ">= 1" not in str(var.get("validation", "")):
        v.append("reserved_concurrency must be validated >= 1 (0 disables the function)")
    return v


def check_lambda_parallel(tf: dict) -> list[str]:
    """Lambda hands a sandbox one invocation at a time: BITNET_PARALLEL is "1", set after
    var.extra_environment in the merge so that it cannot be raised there."""
    env = str(tf["locals"].get("environment", ""))
    sets = [m.start() for m in re.finditer(r"\bBITNET_PARALLEL\s*=", env)]
    if len(sets) != 1 or not re.search(r'\bBITNET_PARALLEL\s*=\s*"1"', env):
        return ['environment must set BITNET_PARALLEL = "1" (one request per sandbox), once']
    extra = env.rfind("var.extra_environment")
    if extra < 0 or extra > sets[0] or "? {BITNET_PARALLEL" in env or ": {BITNET_PARALLEL" in env:
        return ["BITNET_PARALLEL must be set unconditionally after var.extra_environment in the merge "
                "(extra_environment must not raise it)"]
    return []


def _validations(var: dict) -> list[dict]:
    val = var.get("validation", [])
    return val if isinstance(val, list) else [val]


def check_arm64_acknowledgement(tf: dict) -> list[str]:
    """arm64 runs the engine's scalar fallback: refused unless allow_scalar_arm64 = true."""
    v: list[str] = []
    ack = tf["variable"].get("allow_scalar_arm64")
    if ack is None:
        return ["variable allow_scalar_arm64 (acknowledgement for arm64's scalar kernels) is missing"]
    if ack.get("type") != "bool" or ack.get("default") is not False:
        v.append(f"allow_scalar_arm64 must be a bool defaulting to false, is {ack.get('type')!r} = {ack.get('default')!r}")
    arch = tf["variable"].get("architecture", {})
    guard = [x for x in _validations(arch)
             if re.search(r'var\.architecture\s*!=\s*"arm64"\s*\|\|\s*var\.allow_scalar_arm64\b', str(x.get("condition")))]
    if not guard:
        v.append('architecture must be validated with var.architecture != "arm64" || var.allow_scalar_arm64')
    elif "scalar" not in str(guard[0].get("error_message", "")).lower():
        v.append("the arm64 validation message must say that arm64 runs the scalar kernels")
    return v


def check_lambda_auth(tf: dict) -> list[str]:
    """The function gets API_KEY (from a sensitive variable) or, only on explicit opt-in,
    BITNET_ALLOW_NO_AUTH=1; with neither, the plan fails."""
    v: list[str] = []
    var = tf["variable"]
    key = var.get("api_key")
    if key is None:
        return ["variable api_key is missing"]
    if key.get("sensitive") is not True:
        v.append("api_key must be sensitive")
    opt = var.get("allow_no_auth")
    if opt is None:
        return v + ["variable allow_no_auth (explicit no-auth opt-in) is missing"]
    if opt.get("type") != "bool" or opt.get("default") is not False:
        v.append(f"allow_no_auth must be a bool defaulting to false, is {opt.get('type')!r} = {opt.get('default')!r}")
    conds = [str(x.get("condition")) for x in _validations(opt) + _validations(key)]
    if not any("var.allow_no_auth" in c and re.search(r"var\.api_key\s*!=\s*null", c) for c in conds):
        v.append("a validation must require api_key or allow_no_auth = true")
    url = [str(x.get("condition")) for x in _validations(var.get("function_url_auth_type", {}))]
    if not any('"NONE"' in c and re.search(r"var\.api_key\s*!=\s*null", c) for c in url):
        v.append('function_url_auth_type = "NONE" must be validated to need api_key')
    env = str(tf["locals"].get("environment", ""))
    if not re.search(r"var\.api_key == null \? \{\} : \{API_KEY = var\.api_key\}", env):
        v.append("environment must set API_KEY from var.api_key when it is set")
    no_auth = re.findall(r"([^,]*)\? \{BITNET_ALLOW_NO_AUTH = \"1\"\} : \{\}", env)
    if len(no_auth) != 1 or "var.allow_no_auth" not in no_auth[0]:
        v.append("environment must set BITNET_ALLOW_NO_AUTH=1 only when var.allow_no_auth is true")
    if re.search(r"BITNET_ALLOW_NO_AUTH\s*=", env.replace('BITNET_ALLOW_NO_AUTH = "1"} : {}', "")):
        v.append("BITNET_ALLOW_NO_AUTH must not be set unconditionally")
    extra = str(var.get("extra_environment", {}).get("validation", ""))
    if "API_KEY" not in extra or "BITNET_ALLOW_NO_AUTH" not in extra:
        v.append("extra_environment must be validated not to carry API_KEY / BITNET_ALLOW_NO_AUTH")
    return v


def check_example(tf: dict) -> list[str]:
    v: list[str] = []
    mods = tf["module"]
    if not any(m.get("source") == "../../modules/bitnet-lambda" for m in mods.values()):
        v.append("example must call ../../modules/bitnet-lambda")
    zip_default = tf["variable"].get("lambda_zip_path", {}).get("default", "")
    if not str(zip_default).endswith("target/lambda/bootstrap/bootstrap.zip"):
        v.append(f"example zip path must point at target/lambda/bootstrap/bootstrap.zip, is {zip_default!r}")
    auth = tf["variable"].get("function_url_auth_type", {}).get("default")
    if auth != "AWS_IAM":
        v.append(f"example must default to AWS_IAM, is {auth!r}")
    # The example passes the safety switches through with the module's safe defaults (a
    # root variable defaulting to null would override the module's default cap).
    mod = next((m for m in mods.values() if m.get("source") == "../../modules/bitnet-lambda"), {})
    module_vars = load_tf(TF_MODULE)["variable"]
    for name in ("reserved_concurrency", "allow_scalar_arm64", "allow_no_auth", "api_key"):
        if mod.get(name) != f"${{var.{name}}}":
            v.append(f"example must pass {name} to the module")
            continue
        got = tf["variable"].get(name, {}).get("default")
        want = module_vars.get(name, {}).get("default")
        if got != want:
            v.append(f"example default of {name} must match the module's ({want!r}), is {got!r}")
    if tf["variable"].get("api_key", {}).get("sensitive") is not True:
        v.append("example api_key must be sensitive")
    for out in ("function_url", "function_name", "bucket"):
        if out not in tf["output"]:
            v.append(f"example is missing output {out}")
    return v


def check_required_version(root: Path) -> list[str]:
    """Cross-variable validations need Terraform >= 1.9."""
    v = []
    for tf in sorted(Path(root).rglob("*.tf")):
        for m in re.finditer(r'required_version\s*=\s*"([^"]*)"', tf.read_text()):
            got = re.search(r">=\s*(\d+)\.(\d+)", m.group(1))
            if not got or (int(got.group(1)), int(got.group(2))) < (1, 9):
                v.append(f"{tf}: required_version must be >= 1.9 (validations refer to other variables), is {m.group(1)!r}")
    return v


def check_no_provisioned_concurrency(root: Path) -> list[str]:
    v = []
    for tf in sorted(Path(root).rglob("*.tf")):
        text = tf.read_text()
        if re.search(r"aws_lambda_provisioned_concurrency_config|provisioned_concurrent_executions", text):
            v.append(f"{tf}: provisioned concurrency costs money while idle")
    return v


# --------------------------------------------------------------------------- Bicep


def load_bicep(path: Path) -> dict:
    from pycep import BicepParser

    return BicepParser().parse(file_path=Path(path))


def _resolve(doc: dict, value: Any, depth: int = 0) -> Any:
    """Resolve a bare identifier to a variable's value or a parameter's default."""
    if depth > 10 or not isinstance(value, str):
        return value
    if value in doc.get("variables", {}):
        return _resolve(doc, doc["variables"][value]["value"], depth + 1)
    if value in doc.get("parameters", {}):
        return _resolve(doc, doc["parameters"][value].get("default"), depth + 1)
    return value


def _resources(doc: dict, rtype: str) -> dict[str, dict]:
    return {n: r for n, r in doc["resources"].items() if r["type"].lower() == rtype.lower()}


def _role_id(doc: dict, body: dict) -> str | None:
    rd = body["properties"]["roleDefinitionId"]
    if isinstance(rd, dict) and "function" in rd:
        return _resolve(doc, rd["function"]["parameters"].get("resource_name_1"))
    return _resolve(doc, rd)


def _body(resource: dict) -> dict:
    """A resource's body, unwrapping pycep's loop (`[for ...]`) and condition (`if`) wrappers."""
    cfg = resource["config"]
    if isinstance(cfg, dict) and ("loop_type" in cfg or "condition" in cfg) and "config" in cfg:
        return cfg["config"]
    return cfg


def _container_names(doc: dict) -> dict[str, frozenset]:
    """resource symbol -> names of the blob containers it declares (a loop declares several)."""
    out = {}
    for sym, r in _resources(doc, "Microsoft.Storage/storageAccounts/blobServices/containers").items():
        cfg = r["config"]
        if "loop_type" in cfg:
            names = _resolve(doc, cfg["loop_type"]["detail"]["array_name"])
            out[sym] = frozenset(names if isinstance(names, list) else [str(names)])
        else:
            out[sym] = frozenset([_resolve(doc, _body(r).get("name"))])
    return out


def _scope_symbol(body: dict) -> str | None:
    scope = body.get("scope")
    if isinstance(scope, str):
        return scope
    if isinstance(scope, dict):  # hostContainers[i]
        operand = scope.get("operator", {}).get("operands", {}).get("operand_1")
        return operand if isinstance(operand, str) else None
    return None


def check_role_assignments(doc: dict, writable: set[str]) -> list[str]:
    """Reader on the models container exactly; Contributor only on `writable` containers; nothing wider."""
    v: list[str] = []
    containers = _container_names(doc)
    reader_on_models = False
    for sym, r in _resources(doc, "Microsoft.Authorization/roleAssignments").items():
        body = _body(r)
        role = _role_id(doc, body)
        scope = _scope_symbol(body)
        names = containers.get(scope)
        if role == ACR_PULL:
            continue
        if role not in (STORAGE_BLOB_DATA_READER, STORAGE_BLOB_DATA_CONTRIBUTOR):
            v.append(f"{sym}: unexpected role {role!r}")
            continue
        if names is None:
            v.append(f"{sym}: storage role must be scoped on a blob container, is scoped on {scope!r}")
            continue
        if role == STORAGE_BLOB_DATA_READER:
            if names == frozenset(["models"]):
                reader_on_models = True
            else:
                v.append(f"{sym}: Storage Blob Data Reader on {sorted(names)} instead of the models container")
        elif "models" in names or not names <= writable:
            v.append(f"{sym}: Storage Blob Data Contributor on {sorted(names)} is wider than needed")
    if not reader_on_models:
        v.append("Storage Blob Data Reader (2a2b9908-...) must be assigned on the models container")
    return v


def _settings(doc: dict, value: Any) -> dict[str, Any]:
    """name -> value for appSettings / env built with concat(var, var, ...)."""
    items: list = []
    if isinstance(value, dict) and value.get("function", {}).get("type") == "concat":
        for arg in value["function"]["parameters"].values():
            resolved = _resolve(doc, arg)
            if isinstance(resolved, dict) and "operator" in resolved:  # cond ? [] : [...]
                ops = resolved["operator"].get("operands", {})
                for k in ("true_value", "false_value"):
                    if isinstance(ops.get(k), list):
                        items.extend(ops[k])
            elif isinstance(resolved, list):
                items.extend(resolved)
    elif isinstance(value, list):
        items = value
    return {i.get("name"): i.get("value", i.get("secretRef")) for i in items if isinstance(i, dict)}


def _setting_entries(doc: dict, value: Any) -> list[dict]:
    """Every {name, value|secretRef} item of an appSettings / env concat(...), with the
    condition (as text) and branch of the `cond ? [...] : [...]` it sits in, if any."""
    out: list[dict] = []
    args = []
    if isinstance(value, dict) and value.get("function", {}).get("type") == "concat":
        args = list(value["function"]["parameters"].values())
    elif isinstance(value, list):
        args = [value]
    for arg in args:
        resolved = _resolve(doc, arg)
        if isinstance(resolved, dict) and resolved.get("operator", {}).get("type") == "conditional":
            ops = resolved["operator"]["operands"]
            for branch in ("true_value", "false_value"):
                for item in _resolve(doc, ops.get(branch)) or []:
                    if isinstance(item, dict):
                        out.append(dict(item, _cond=str(ops.get("condition")), _branch=branch))
        elif isinstance(resolved, list):
            for item in resolved:
                if isinstance(item, dict):
                    out.append(dict(item, _cond=None, _branch=None))
        elif resolved is not None:
            out.append({"name": None, "_unparsed": resolved, "_cond": None, "_branch": None})
    return out


def _param_decorators(doc: dict, name: str) -> dict[str, Any]:
    return {d.get("type"): d.get("argument", True) for d in doc["parameters"].get(name, {}).get("decorators", [])}


# The server's MAX_PARALLEL (functions/api/src/config.rs): more is ignored.
MAX_PARALLEL = 64
DEFAULT_PARALLEL = 4


def _string_of(value: Any) -> Any:
    """`string(x)` -> 'x'; anything else -> None."""
    if isinstance(value, dict) and value.get("function", {}).get("type") == "string":
        return value["function"].get("parameters", {}).get("value_to_convert")
    return None


def _follows_parallel(doc: dict, expr: Any) -> bool:
    """`expr` is the parallel parameter, or a parameter whose default is it."""
    if expr == "parallel":
        return True
    return expr in doc["parameters"] and doc["parameters"][expr].get("default") == "parallel"


def check_parallel(doc: dict, settings: Any, concurrency: Any, knob: str) -> list[str]:
    """`param parallel int = 4` (1..64), passed unconditionally as BITNET_PARALLEL =
    string(parallel); the front door's per-instance HTTP concurrency (`concurrency`, the
    expression of `knob`) follows it by default: each request gets a slot at once, more load
    scales out instead of queueing in one instance."""
    v: list[str] = []
    par = doc["parameters"].get("parallel")
    if par is None:
        return ["parameter parallel (BITNET_PARALLEL) is missing"]
    if par.get("type") != "int" or par.get("default") != DEFAULT_PARALLEL:
        v.append(f"parallel must be an int parameter defaulting to {DEFAULT_PARALLEL}, is "
                 f"{par.get('type')!r} = {par.get('default')!r}")
    dec = _param_decorators(doc, "parallel")
    if dec.get("min_value") != 1 or dec.get("max_value") != MAX_PARALLEL:
        v.append(f"parallel must be @minValue(1) @maxValue({MAX_PARALLEL}) (the server's limit), is "
                 f"{dec.get('min_value')!r}..{dec.get('max_value')!r}")
    if not dec.get("description"):
        v.append("parallel needs a @description")
    entries = [e for e in _setting_entries(doc, settings) if e.get("name") == "BITNET_PARALLEL"]
    if len(entries) != 1 or entries[0]["_cond"] is not None or _string_of(entries[0].get("value")) != "parallel":
        v.append(f"BITNET_PARALLEL must always be set to string(parallel), is {entries!r}")
    if not _follows_parallel(doc, concurrency):
        default = doc["parameters"].get(concurrency, {}).get("default") if isinstance(concurrency, str) else None
        v.append(f"{knob} must be the parallel parameter or a parameter defaulting to it, is {concurrency!r}"
                 + (f" (default {default!r})" if default is not None else ""))
    return v


def check_flex_parallel(doc: dict) -> list[str]:
    sites = _resources(doc, "Microsoft.Web/sites")
    if len(sites) != 1:
        return ["expected one Microsoft.Web/sites"]
    props = next(iter(sites.values()))["config"]["properties"]
    http = props.get("functionAppConfig", {}).get("scaleAndConcurrency", {}).get("triggers", {}).get("http", {})
    return check_parallel(doc, props.get("siteConfig", {}).get("appSettings"),
                          http.get("perInstanceConcurrency"), "triggers.http.perInstanceConcurrency")


def check_containerapp_parallel(doc: dict) -> list[str]:
    apps = _resources(doc, "Microsoft.App/containerApps")
    if len(apps) != 1:
        return ["expected one Microsoft.App/containerApps"]
    template = next(iter(apps.values()))["config"]["properties"]["template"]
    containers = template.get("containers", [])
    rules = [rule["http"] for rule in template.get("scale", {}).get("rules", []) if "http" in rule]
    if len(rules) != 1:
        return [f"expected one HTTP scale rule, found {len(rules)}"]
    concurrent = rules[0].get("metadata", {}).get("concurrentRequests")
    return check_parallel(doc, containers[0].get("env") if containers else None,
                          _string_of(concurrent) or concurrent, "HTTP scale rule concurrentRequests")


def check_flex_auth(doc: dict) -> list[str]:
    """API_KEY from a required secure parameter, or BITNET_ALLOW_NO_AUTH=1 only on the explicit
    allowNoAuth opt-in and only without a key: never neither by default, never no-auth by default."""
    v: list[str] = []
    params = doc["parameters"]
    key = params.get("apiKey")
    if key is None:
        return ["parameter apiKey is missing"]
    if "secure" not in _param_decorators(doc, "apiKey"):
        v.append("apiKey must be @secure()")
    if key.get("default") is not None:
        v.append(f"apiKey must be a required parameter (no default), so that no deployment is keyless by accident; default is {key.get('default')!r}")
    opt = params.get("allowNoAuth")
    if opt is None or opt.get("type") != "bool" or opt.get("default") is not False:
        v.append(f"allowNoAuth must be a bool parameter defaulting to false, is {opt!r}")
    sites = _resources(doc, "Microsoft.Web/sites")
    if len(sites) != 1:
        return v + ["expected one Microsoft.Web/sites"]
    entries = _setting_entries(doc, next(iter(sites.values()))["config"]["properties"].get("siteConfig", {}).get("appSettings"))
    keys = [e for e in entries if e.get("name") == "API_KEY"]
    if not keys or any(e.get("value") != "apiKey" for e in keys):
        v.append(f"app setting API_KEY must come from the apiKey parameter, is {keys!r}")
    for e in keys:
        if e["_cond"] is not None and not ("apiKey" in e["_cond"] and e["_branch"] == "false_value" and "empty" in e["_cond"]):
            v.append(f"API_KEY must be set whenever apiKey is non-empty, is under {e['_cond']} ({e['_branch']})")
    for e in (x for x in entries if x.get("name") == "BITNET_ALLOW_NO_AUTH"):
        cond = e["_cond"] or ""
        if e.get("value") != "1" or e["_branch"] != "true_value" or "allowNoAuth" not in cond or "apiKey" not in cond:
            v.append(f"BITNET_ALLOW_NO_AUTH may only be set to '1' when allowNoAuth is true and apiKey is empty, is {e!r}")
    if not any(e.get("name") == "BITNET_ALLOW_NO_AUTH" for e in entries):
        v.append("the allowNoAuth opt-in must set BITNET_ALLOW_NO_AUTH=1")
    return v


def check_containerapp_auth(doc: dict) -> list[str]:
    """The container app is public (external ingress, bitnet serve on 0.0.0.0): API_KEY always,
    from a required secure parameter of at least 16 characters, as a Container Apps secret."""
    v: list[str] = []
    key = doc["parameters"].get("apiKey")
    if key is None:
        return ["parameter apiKey is missing"]
    dec = _param_decorators(doc, "apiKey")
    if "secure" not in dec:
        v.append("apiKey must be @secure()")
    if key.get("default") is not None:
        v.append(f"apiKey must be a required parameter (no default), default is {key.get('default')!r}")
    if not isinstance(dec.get("min_length"), int) or dec["min_length"] < 16:
        v.append(f"apiKey must be @minLength(16) or more, is {dec.get('min_length')!r}")
    apps = _resources(doc, "Microsoft.App/containerApps")
    if len(apps) != 1:
        return v + ["expected one Microsoft.App/containerApps"]
    props = next(iter(apps.values()))["config"]["properties"]
    containers = props["template"].get("containers", [])
    env = _setting_entries(doc, containers[0].get("env") if containers else None)
    keys = [e for e in env if e.get("name") == "API_KEY"]
    if len(keys) != 1 or keys[0]["_cond"] is not None or not keys[0].get("secretRef"):
        v.append(f"container env API_KEY must always be set from a secret, is {keys!r}")
    if any(e.get("name") == "BITNET_ALLOW_NO_AUTH" for e in env):
        v.append("the public container app must not set BITNET_ALLOW_NO_AUTH")
    secrets = _setting_entries(doc, _resolve(doc, props["configuration"].get("secrets")))
    ref = keys[0].get("secretRef") if keys else None
    if not any(s.get("name") == ref and s.get("value") == "apiKey" and s["_cond"] is None for s in secrets):
        v.append(f"secret {ref!r} must always hold the apiKey parameter, secrets are {secrets!r}")
    return v


def _root_symbol(value: Any) -> str | None:
    """`identity.properties.principalId` / `identity.id` / '${identity.id}' -> 'identity'."""
    if isinstance(value, dict):
        op = value.get("operator", {})
        if op.get("type") in ("property_accessor", "index_accessor"):
            return _root_symbol(op["operands"]["operand_1"])
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"'?\$\{([A-Za-z_][A-Za-z0-9_]*)\.[^}]*\}'?", value)
        if m:
            return m.group(1)
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            return value
    return None


def check_flex_identities(doc: dict) -> list[str]:
    """The runtime identity (AZURE_CLIENT_ID, AzureWebJobsStorage__clientId) has no write role on
    the deployment package container (nor on anything containing it); the package is written and
    read as a separate deployment identity, which holds write on that container and nothing else."""
    v: list[str] = []
    identities = set(_resources(doc, "Microsoft.ManagedIdentity/userAssignedIdentities"))
    sites = _resources(doc, "Microsoft.Web/sites")
    if len(sites) != 1:
        return ["expected one Microsoft.Web/sites"]
    site = next(iter(sites.values()))["config"]
    settings = _settings(doc, site["properties"].get("siteConfig", {}).get("appSettings"))
    runtime = {_root_symbol(settings.get(n)) for n in ("AZURE_CLIENT_ID", "AzureWebJobsStorage__clientId")}
    if len(runtime) != 1 or not runtime <= identities:
        return [f"AZURE_CLIENT_ID and AzureWebJobsStorage__clientId must name one user-assigned identity, name {runtime!r}"]
    runtime_id = runtime.pop()
    storage = site["properties"].get("functionAppConfig", {}).get("deployment", {}).get("storage", {})
    deploy_id = _root_symbol(storage.get("authentication", {}).get("userAssignedIdentityResourceId"))
    if deploy_id not in identities:
        v.append(f"deployment storage must authenticate with a user-assigned identity of this template, uses {deploy_id!r}")
    elif deploy_id == runtime_id:
        v.append(f"deployment storage authenticates with the runtime identity {runtime_id!r}: it then needs write on the "
                 "package container; use a separate deployment identity")
    attached = {_root_symbol(k) for k in site.get("identity", {}).get("userAssignedIdentities", {})}
    if attached != {runtime_id, deploy_id}:
        v.append(f"the site must carry exactly the runtime and deployment identities, carries {sorted(map(str, attached))}")

    m = re.search(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}$", str(storage.get("value", "")))
    package_container = _resolve(doc, m.group(1)) if m else None
    containers = _container_names(doc)
    deploy_write = False
    for sym, r in _resources(doc, "Microsoft.Authorization/roleAssignments").items():
        body = _body(r)
        role = _role_id(doc, body)
        principal = _root_symbol(body.get("properties", {}).get("principalId"))
        names = containers.get(_scope_symbol(body))
        covers_package = names is None or package_container in names  # a wider scope covers it too
        if principal == runtime_id and role in WRITE_ROLES and covers_package:
            v.append(f"{sym}: the runtime identity {runtime_id!r} gets {WRITE_ROLES[role]} on "
                     f"{sorted(names) if names else _scope_symbol(body)!r}, which covers the deployment container "
                     f"{package_container!r}: it could replace its own code")
        if principal == deploy_id:
            if role == STORAGE_BLOB_DATA_CONTRIBUTOR and names == frozenset([package_container]):
                deploy_write = True
            else:
                v.append(f"{sym}: the deployment identity may only hold Storage Blob Data Contributor on the "
                         f"deployment container, gets {WRITE_ROLES.get(role, role)!r} on {sorted(names) if names else _scope_symbol(body)!r}")
        if principal not in (runtime_id, deploy_id):
            v.append(f"{sym}: role assignment for an unexpected principal {principal!r}")
    if deploy_id in identities and deploy_id != runtime_id and not deploy_write:
        v.append(f"the deployment identity {deploy_id!r} needs Storage Blob Data Contributor on the deployment "
                 f"container {package_container!r} (az functionapp deploy writes the package as it)")
    return v


def check_flex(doc: dict) -> list[str]:
    v: list[str] = []
    sites = _resources(doc, "Microsoft.Web/sites")
    if len(sites) != 1:
        return [f"expected one Microsoft.Web/sites, found {len(sites)}"]
    site = next(iter(sites.values()))["config"]
    if "linux" not in str(site.get("kind")):
        v.append("function app must be Linux")
    props = site["properties"]
    fac = props.get("functionAppConfig", {})
    sc = fac.get("scaleAndConcurrency", {})
    always = _resolve(doc, sc.get("alwaysReady", []))
    if always:
        for entry in always:
            count = _resolve(doc, entry.get("instanceCount", 0)) if isinstance(entry, dict) else entry
            if count != 0:
                v.append(f"alwaysReady must be empty or 0 (scale to zero), has {entry!r}")
    mem = _resolve(doc, sc.get("instanceMemoryMB"))
    if mem != 4096:
        v.append(f"instanceMemoryMB must be 4096 (model held in memory), is {mem!r}")
    mic = sc.get("maximumInstanceCount")
    if mic not in doc["parameters"]:
        v.append(f"maximumInstanceCount must be a parameter, is {mic!r}")
    rt = fac.get("runtime", {})
    if rt.get("name") != "custom" or str(rt.get("version")) != "1.0":
        v.append(f"runtime must be custom 1.0, is {rt!r}")
    dep = fac.get("deployment", {}).get("storage", {})
    if dep.get("type") != "blobContainer" or dep.get("authentication", {}).get("type") != "UserAssignedIdentity":
        v.append("deployment storage must be a blob container authenticated by the user-assigned identity")
    if site.get("identity", {}).get("type") != "UserAssigned":
        v.append("function app must use the user-assigned identity")
    if props.get("httpsOnly") is not True:
        v.append("httpsOnly must be true")

    plans = _resources(doc, "Microsoft.Web/serverfarms")
    if not plans or next(iter(plans.values()))["config"].get("sku", {}).get("tier") != "FlexConsumption":
        v.append("plan must be FlexConsumption (FC1)")

    settings = _settings(doc, props.get("siteConfig", {}).get("appSettings"))
    for name in ("BITNET_MODEL", "BITNET_MODEL_SHA256", "BITNET_MODEL_STORAGE", "AZURE_CLIENT_ID",
                 "APPLICATIONINSIGHTS_CONNECTION_STRING"):
        if name not in settings:
            v.append(f"app setting {name} missing")
    if settings.get("BITNET_MODEL_STORAGE") != "memory":
        v.append("BITNET_MODEL_STORAGE must be memory on Flex (0.8 GB temporary disk)")
    if settings.get("FUNCTIONS_WORKER_RUNTIME"):
        v.append("Flex takes the runtime from functionAppConfig.runtime, not FUNCTIONS_WORKER_RUNTIME")

    if not _resources(doc, "Microsoft.Insights/components") or not _resources(doc, "Microsoft.OperationalInsights/workspaces"):
        v.append("Application Insights and a Log Analytics workspace are required")
    v += _check_storage(doc)
    v += check_role_assignments(doc, writable={"app-package", "azure-webjobs-hosts", "azure-webjobs-secrets"})
    v += check_flex_identities(doc)
    v += check_flex_auth(doc)
    v += check_flex_parallel(doc)
    return v


def _check_storage(doc: dict) -> list[str]:
    v = []
    for sym, r in _resources(doc, "Microsoft.Storage/storageAccounts").items():
        p = r["config"]["properties"]
        if p.get("allowBlobPublicAccess") is not False:
            v.append(f"{sym}: allowBlobPublicAccess must be false")
        if p.get("allowSharedKeyAccess") is not False:
            v.append(f"{sym}: allowSharedKeyAccess must be false (identity only)")
        if p.get("minimumTlsVersion") != "TLS1_2":
            v.append(f"{sym}: minimumTlsVersion must be TLS1_2")
    for sym, r in _resources(doc, "Microsoft.Storage/storageAccounts/blobServices/containers").items():
        body = _body(r)
        if body.get("properties", {}).get("publicAccess") != "None":
            v.append(f"{sym}: container publicAccess must be None")
    return v


def _memory_gib(value: str) -> float:
    m = re.fullmatch(r"([0-9.]+)Gi", str(value))
    return float(m.group(1)) if m else 0.0


def check_containerapp(doc: dict) -> list[str]:
    v: list[str] = []
    apps = _resources(doc, "Microsoft.App/containerApps")
    if len(apps) != 1:
        return [f"expected one Microsoft.App/containerApps, found {len(apps)}"]
    app = next(iter(apps.values()))["config"]
    props = app["properties"]
    ingress = props["configuration"].get("ingress", {})
    port = _resolve(doc, ingress.get("targetPort"))
    if port != 8080:
        v.append(f"ingress targetPort must be 8080, is {port!r}")
    if ingress.get("allowInsecure") is not False:
        v.append("ingress must not allow plain HTTP")
    scale = props["template"].get("scale", {})
    min_r = _resolve(doc, scale.get("minReplicas"))
    if min_r != 0:
        v.append(f"minReplicas must be 0, is {min_r!r}")
    if scale.get("maxReplicas") not in doc["parameters"]:
        v.append("maxReplicas must be a parameter")
    if not any("http" in rule for rule in scale.get("rules", [])):
        v.append("an HTTP scale rule is required")
    containers = props["template"].get("containers", [])
    if len(containers) != 1:
        return v + ["expected one container"]
    c = containers[0]
    image = str(c.get("image"))
    if "containerRegistry" not in image:
        v.append(f"image must come from the containerRegistry parameter, is {image!r}")
    res = c.get("resources", {})
    cpu = res.get("cpu")
    if isinstance(cpu, dict) and cpu.get("function", {}).get("type") == "json":
        cpu = _resolve(doc, next(iter(cpu["function"]["parameters"].values())))
    try:
        cpu_f = float(_resolve(doc, cpu))
    except (TypeError, ValueError):
        cpu_f = 0.0
    if cpu_f < 2.0:
        v.append(f"cpu must default to >= 2 vCPU (disk and memory for the model), is {cpu!r}")
    mem = _memory_gib(_resolve(doc, res.get("memory")))
    if mem < 4.0:
        v.append(f"memory must default to >= 4Gi, is {_resolve(doc, res.get('memory'))!r}")
    probes = {p.get("type"): p for p in c.get("probes", [])}
    for ptype, path in (("Liveness", "/health"), ("Readiness", "/ready")):
        p = probes.get(ptype)
        if not p:
            v.append(f"{ptype} probe missing")
            continue
        got = p.get("httpGet", {}).get("path")
        if got != path:
            v.append(f"{ptype} probe must be on {path}, is {got!r}")
        if _resolve(doc, p.get("httpGet", {}).get("port")) != 8080:
            v.append(f"{ptype} probe must target port 8080")
    env = _settings(doc, c.get("env"))
    for name in ("BITNET_MODEL", "BITNET_MODEL_SHA256", "AZURE_CLIENT_ID"):
        if name not in env:
            v.append(f"container env {name} missing")
    if app.get("identity", {}).get("type") != "UserAssigned":
        v.append("container app must use the user-assigned identity")
    v += _check_storage(doc)
    v += check_role_assignments(doc, writable=set())
    v += check_containerapp_auth(doc)
    v += check_containerapp_parallel(doc)
    return v


SKIP_RE = re.compile(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?")
# Kubernetes manifests carry theirs as annotations: `checkov.io/skipN: "CKV_K8S_N=reason"`.
K8S_SKIP_RE = re.compile(r"checkov\.io/skip\d+:\s*\"?([A-Z0-9_]+)(?:=([^\"]*))?")


def check_skip_reasons(root: Path) -> list[str]:
    """Every inline checkov suppression must carry a real reason."""
    v = []
    files = [p for ext in ("*.tf", "*.bicep", "*.yaml") for p in Path(root).rglob(ext)]
    for f in sorted(files):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            m = SKIP_RE.search(line) or K8S_SKIP_RE.search(line)
            if m and len((m.group(2) or "").strip()) < 30:
                v.append(f"{f}:{n}: {m.group(1)} suppressed without a real reason")
    return v
