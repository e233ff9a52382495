# Example root module: one scale-to-zero BitNet function with its own model bucket.
#
#   cargo lambda build --release --output-format zip -p bitnet-lambda   # from the repo root
#   cd terraform/examples/basic && terraform init && terraform apply
#   aws s3 cp ggml-model-i2_s.gguf "$(terraform output -raw model_uri)" --metadata sha256=<hex>

terraform {
  required_version = ">= 1.5.0"

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

  name            = var.name
  lambda_zip_path = var.lambda_zip_path
  architecture    = var.architecture
  model_key       = var.model_key
  model_sha256    = var.model_sha256

  function_url_auth_type = var.function_url_auth_type
  api_key                = var.api_key
  cors                   = var.cors
}
