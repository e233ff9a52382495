output "function_url" {
  description = "Streaming endpoint."
  value       = module.bitnet.function_url
}

output "function_name" {
  description = "Lambda function name."
  value       = module.bitnet.function_name
}

output "bucket" {
  description = "Model bucket."
  value       = module.bitnet.bucket
}

output "model_uri" {
  description = "Where to upload the model."
  value       = module.bitnet.model_uri
}
