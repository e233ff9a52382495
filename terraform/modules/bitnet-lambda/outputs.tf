output "function_url" {
  description = "HTTPS endpoint of the function URL (RESPONSE_STREAM). With AWS_IAM auth, sign requests with SigV4 (service \"lambda\")."
  value       = aws_lambda_function_url.this.function_url
}

output "function_name" {
  description = "Name of the Lambda function (for cargo lambda deploy / aws lambda update-function-code)."
  value       = aws_lambda_function.this.function_name
}

output "function_arn" {
  description = "ARN of the Lambda function."
  value       = aws_lambda_function.this.arn
}

output "bucket" {
  description = "Name of the model bucket (null with model_in_image)."
  value       = local.bucket_name
}

output "model_uri" {
  description = "BITNET_MODEL as set on the function; upload the model here (null with model_in_image: the image holds it)."
  value       = local.model_uri
}

output "embedding_model_uri" {
  description = "BITNET_EMBEDDING_MODEL as set on the function (null without embedding_model_key); upload the embedding model here."
  value       = local.embedding_model_uri
}

output "role_arn" {
  description = "ARN of the execution role."
  value       = aws_iam_role.this.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the function."
  value       = aws_cloudwatch_log_group.this.name
}
