terraform {
  required_version = ">= 1.5.0"

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
