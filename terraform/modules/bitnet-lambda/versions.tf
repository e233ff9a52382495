terraform {
  # 1.9: input validations that refer to other variables (architecture /
  # allow_scalar_arm64, allow_no_auth / api_key).
  required_version = ">= 1.9.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.28 is the first release whose aws_lambda_function_url adds the
      # lambda:InvokeFunction permission (InvokedViaFunctionUrl) that public
      # (authorization_type = "NONE") function URLs need since October 2025.
      version = ">= 6.28.0, < 7.0.0"
    }
  }
}
