# Model bucket: private, encrypted, versioned. Only created when
# var.create_bucket is true; otherwise var.bucket_name names an existing one.

resource "aws_s3_bucket" "models" {
  #checkov:skip=CKV_AWS_18:Server access logs need a second bucket; the bucket is private and read only by the function role (CloudTrail data events can audit it).
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; the model is a reproducible, sha256-pinned artefact that can be uploaded again.
  #checkov:skip=CKV2_AWS_62:Nothing consumes object events; notifications would add moving parts for no reader.
  count = var.create_bucket && !var.model_in_image ? 1 : 0

  bucket = var.bucket_name
  # bucket_prefix allows 37 characters and no '_' or upper case.
  bucket_prefix = var.bucket_name == null ? "${substr(replace(lower(var.name), "_", "-"), 0, 29)}-models-" : null
  force_destroy = false
  tags          = var.tags
}

resource "aws_s3_bucket_public_access_block" "models" {
  count = var.create_bucket && !var.model_in_image ? 1 : 0

  bucket                  = aws_s3_bucket.models[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "models" {
  count = var.create_bucket && !var.model_in_image ? 1 : 0

  bucket = aws_s3_bucket.models[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "models" {
  count = var.create_bucket && !var.model_in_image ? 1 : 0

  bucket = aws_s3_bucket.models[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

# SSE-KMS with the AWS managed key aws/s3: no monthly key fee (unlike a
# customer-managed key), and the bucket key keeps KMS request charges per
# cold start negligible. Principals of this account reading through S3 need no
# extra KMS permission for the AWS managed key.
resource "aws_s3_bucket_server_side_encryption_configuration" "models" {
  count = var.create_bucket && !var.model_in_image ? 1 : 0

  bucket = aws_s3_bucket.models[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

# Old model versions and abandoned multipart uploads would be paid for at rest.
resource "aws_s3_bucket_lifecycle_configuration" "models" {
  count = var.create_bucket && !var.model_in_image ? 1 : 0

  bucket = aws_s3_bucket.models[0].id

  rule {
    id     = "expire-old-model-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = 30
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.models]
}

# Refuse plain-HTTP access to the bucket.
data "aws_iam_policy_document" "bucket" {
  count = var.create_bucket && !var.model_in_image ? 1 : 0

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.models[0].arn,
      "${aws_s3_bucket.models[0].arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "models" {
  count = var.create_bucket && !var.model_in_image ? 1 : 0

  bucket     = aws_s3_bucket.models[0].id
  policy     = data.aws_iam_policy_document.bucket[0].json
  depends_on = [aws_s3_bucket_public_access_block.models]
}
