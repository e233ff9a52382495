# BitNet b1.58 inference on AWS Lambda, scale to zero.
#
# Nothing here costs money while idle: no provisioned concurrency, no scheduled
# warm-up pings, no NAT/VPC, no customer-managed KMS key unless one is passed in.
# What remains at rest is S3 storage of the model and of the logs you keep.
# Concurrency is capped (var.reserved_concurrency, default 10): each cold start
# downloads the 1.2 GB model, so an unbounded burst is an unbounded bill.

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  zip_package = var.package_type == "Zip"
  # The model comes from the image (built with MODEL_SOURCE=image, BITNET_MODEL set by its ENV)
  # or from S3; only the latter needs a bucket, an S3 permission and BITNET_MODEL here.
  model_from_s3 = !var.model_in_image
  bucket_name   = !local.model_from_s3 ? null : var.create_bucket ? aws_s3_bucket.models[0].id : var.bucket_name
  bucket_arn    = local.model_from_s3 ? "arn:${data.aws_partition.current.partition}:s3:::${local.bucket_name}" : null
  model_uri     = local.model_from_s3 ? "s3://${local.bucket_name}/${var.model_key}" : null
  model_object  = local.model_from_s3 ? "${local.bucket_arn}/${var.model_key}" : null
  # An embedding model beside it (/v1/embeddings), from the same bucket.
  embedding_from_s3   = local.model_from_s3 && var.embedding_model_key != null
  embedding_model_uri = local.embedding_from_s3 ? "s3://${local.bucket_name}/${var.embedding_model_key}" : null
  embedding_object    = local.embedding_from_s3 ? "${local.bucket_arn}/${var.embedding_model_key}" : null
  log_group_name      = "/aws/lambda/${var.name}"
  cache_directory     = "/tmp/bitnet-models"

  environment = merge(
    var.extra_environment,
    local.model_from_s3 ? { BITNET_MODEL = local.model_uri } : {},
    {
      BITNET_CACHE_DIR     = local.cache_directory
      BITNET_MODEL_STORAGE = var.model_storage
      # Lambda hands a sandbox one invocation at a time: one generation slot, nothing to
      # batch with; concurrency scales by sandboxes (capped by var.reserved_concurrency).
      # After extra_environment, so it cannot be raised there.
      BITNET_PARALLEL = "1"
    },
    var.model_sha256 == "" ? {} : { BITNET_MODEL_SHA256 = var.model_sha256 },
    local.embedding_from_s3 ? { BITNET_EMBEDDING_MODEL = local.embedding_model_uri } : {},
    local.embedding_from_s3 && var.embedding_model_sha256 != "" ? { BITNET_EMBEDDING_MODEL_SHA256 = var.embedding_model_sha256 } : {},
    var.threads == null ? {} : { BITNET_THREADS = tostring(var.threads) },
    # The API refuses to start without API_KEY unless BITNET_ALLOW_NO_AUTH=1 says that
    # something in front (the function URL's AWS_IAM auth) checks every caller.
    var.api_key == null ? {} : { API_KEY = var.api_key },
    var.api_key == null && var.allow_no_auth ? { BITNET_ALLOW_NO_AUTH = "1" } : {},
  )
}

resource "aws_cloudwatch_log_group" "this" {
  # Encrypted with an AWS-owned key unless var.kms_key_arn names a CMK (a CMK
  # costs ~1 USD/month even when idle, so it is not the default).
  #checkov:skip=CKV_AWS_338:Retention is var.log_retention_days (default 30): a year of stored logs is a cost at rest; raise it where compliance needs it.
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_117:Response streaming from a function URL is not supported for functions in a VPC; a VPC would also need a NAT gateway (billed hourly, even idle) for hf:// or https model sources.
  #checkov:skip=CKV_AWS_116:Invoked synchronously through its function URL only; a dead-letter queue applies to asynchronous invocations and would never receive anything.
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile and signed artefacts from CI; optional, not part of the cargo lambda build path.
  function_name = var.name
  description   = "BitNet b1.58 ternary LLM inference (streaming via function URL)"
  role          = aws_iam_role.this.arn

  # Zip: the `cargo lambda build` zip on the provided.al2023 runtime. Image: the image built
  # by infra/Dockerfile.lambda and pushed to ECR (its entrypoint is the bootstrap itself).
  package_type     = var.package_type
  filename         = local.zip_package ? var.lambda_zip_path : null
  source_code_hash = local.zip_package ? filebase64sha256(var.lambda_zip_path) : null
  runtime          = local.zip_package ? "provided.al2023" : null
  handler          = local.zip_package ? "bootstrap" : null
  image_uri        = local.zip_package ? null : var.image_uri
  architectures    = [var.architecture]

  memory_size = var.memory_size
  timeout     = var.timeout

  ephemeral_storage {
    size = var.ephemeral_storage_size
  }

  # A cap (default 10), never provisioned concurrency: reserved concurrency costs
  # nothing, and requests beyond it are throttled (429) instead of each starting
  # another instance that downloads the model. null = uncapped (unreserved pool).
  reserved_concurrent_executions = var.reserved_concurrency

  # The environment holds API_KEY when api_key is set; set kms_key_arn to
  # encrypt it with your own key (AWS-owned key otherwise).
  kms_key_arn = var.kms_key_arn

  environment {
    variables = local.environment
  }

  logging_config {
    log_format            = "JSON"
    log_group             = aws_cloudwatch_log_group.this.name
    application_log_level = var.log_level
    system_log_level      = "WARN"
  }

  tracing_config {
    mode = var.tracing_mode
  }

  tags = var.tags

  depends_on = [
    aws_iam_role_policy.this,
    aws_cloudwatch_log_group.this,
  ]
}

resource "aws_lambda_function_url" "this" {
  function_name      = aws_lambda_function.this.function_name
  authorization_type = var.function_url_auth_type
  invoke_mode        = "RESPONSE_STREAM"

  dynamic "cors" {
    for_each = var.cors == null ? [] : [var.cors]
    content {
      allow_origins     = cors.value.allow_origins
      allow_methods     = cors.value.allow_methods
      allow_headers     = cors.value.allow_headers
      expose_headers    = cors.value.expose_headers
      allow_credentials = cors.value.allow_credentials
      max_age           = cors.value.max_age
    }
  }
}

# Public URL (opt-in): anyone may call lambda:InvokeFunctionUrl. Provider >= 6.28
# adds the matching lambda:InvokeFunction (InvokedViaFunctionUrl) statement itself.
resource "aws_lambda_permission" "public_url" {
  count = var.function_url_auth_type == "NONE" ? 1 : 0

  statement_id           = "FunctionURLAllowPublicAccess"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.this.function_name
  principal              = "*"
  function_url_auth_type = "NONE"
}
