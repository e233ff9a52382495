# Example root module: one scale-to-zero BitNet function with its own model bucket.
#
#   cargo lambda build --release --output-format zip -p bitnet-lambda   # from the repo root
#   cd terraform/examples/basic && cp terraform.tfvars.example terraform.tfvars
#   # set api_key, or allow_no_auth = true (AWS_IAM auth alone), in terraform.tfvars
#   terraform init && terraform apply
#   bitnet prepare ggml-model-i2_s.gguf -o bitnet-2b4t-prepared.gguf   # tied embedding/head as Q8_0: 0.88 GB
#   aws s3 cp bitnet-2b4t-prepared.gguf "$(terraform output -raw model_uri)" --metadata sha256=<hex>
#
# Or the container image (infra/Dockerfile.lambda pushed to ECR), with the model in it:
#   terraform apply -var package_type=Image -var image_uri=ACCOUNT.dkr.ecr.REGION.amazonaws.com/bitnet-lambda@sha256:... \
#     -var model_in_image=true

terraform {
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.28.0, < 7.0.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      project = "bitnet-serverless"
    }
  }
}

module "bitnet" {
  source = "../../modules/bitnet-lambda"

  name               = var.name
  package_type       = var.package_type
  lambda_zip_path    = var.lambda_zip_path
  image_uri          = var.image_uri
  model_in_image     = var.model_in_image
  architecture       = var.architecture
  allow_scalar_arm64 = var.allow_scalar_arm64
  model_key          = var.model_key
  model_sha256       = var.model_sha256

  reserved_concurrency = var.reserved_concurrency

  function_url_auth_type = var.function_url_auth_type
  api_key                = var.api_key
  allow_no_auth          = var.allow_no_auth
  cors                   = var.cors
}
