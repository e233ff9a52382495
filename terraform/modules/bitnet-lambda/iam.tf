# Least-privilege execution role: read the one model object (unless it is in the image), write to the
# function's own log group, send X-Ray segments. Nothing else.

data "aws_iam_policy_document" "assume" {
  statement {
    sid     = "LambdaAssumeRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
}

resource "aws_iam_role" "this" {
  name               = "${var.name}-lambda"
  description        = "Execution role of the ${var.name} BitNet Lambda function"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "this" {
  # GetObject covers GET, ranged GET and HEAD (HeadObject is authorised by
  # s3:GetObject), which is all the model loader does. Exactly the model's object
  # ARN (and the embedding model's, when one is served), none when the model is
  # baked into the image.
  dynamic "statement" {
    for_each = local.model_from_s3 ? [local.model_object] : []
    content {
      sid       = "ReadModelObject"
      effect    = "Allow"
      actions   = ["s3:GetObject"]
      resources = compact([local.model_object, local.embedding_object])
    }
  }

  statement {
    sid    = "WriteOwnLogs"
    effect = "Allow"
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents",
    ]
    resources = ["${aws_cloudwatch_log_group.this.arn}:log-stream:*"]
  }

  dynamic "statement" {
    for_each = var.tracing_mode == "Active" ? [1] : []
    content {
      # X-Ray's write actions do not support resource-level permissions.
      sid    = "WriteTraces"
      effect = "Allow"
      actions = [
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
      ]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    for_each = var.model_kms_key_arn == null || !local.model_from_s3 ? [] : [var.model_kms_key_arn]
    content {
      sid       = "DecryptModelThroughS3"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${data.aws_region.current.region}.amazonaws.com"]
      }
    }
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "DecryptOwnEnvironment"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "this" {
  name   = "${var.name}-least-privilege"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.this.json
}
