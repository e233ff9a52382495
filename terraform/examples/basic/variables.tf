variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Function name."
  type        = string
  default     = "bitnet"
}

variable "package_type" {
  description = "Zip (the cargo lambda zip) or Image (infra/Dockerfile.lambda in ECR, image_uri)."
  type        = string
  default     = "Zip"
}

variable "image_uri" {
  description = "ECR image for package_type = Image (by digest: REPO@sha256:...)."
  type        = string
  default     = null
}

variable "model_in_image" {
  description = "The image was built with MODEL_SOURCE=image and carries the model: no bucket, no download."
  type        = bool
  default     = false
}

variable "lambda_zip_path" {
  description = "Zip from `cargo lambda build --release --output-format zip -p bitnet-lambda`, relative to this directory."
  type        = string
  default     = "../../../target/lambda/bootstrap/bootstrap.zip"
}

variable "architecture" {
  description = "x86_64 (default) or arm64 (build with `cargo lambda build --release --arm64 --output-format zip`). arm64 runs the engine's slow scalar kernels and needs allow_scalar_arm64 = true."
  type        = string
  default     = "x86_64"
}

variable "allow_scalar_arm64" {
  description = "Acknowledge that arm64 runs the slow scalar fallback (no aarch64 SIMD kernels yet); required for arm64."
  type        = bool
  default     = false
}

variable "reserved_concurrency" {
  description = "Cap on concurrent executions (each cold start downloads the 1.2 GB model); null removes the cap (accounts with a concurrency quota below 110 cannot reserve any)."
  type        = number
  default     = 10
}

variable "model_key" {
  description = "Key of the model object in the bucket."
  type        = string
  default     = "models/bitnet-2b4t-prepared.gguf"
}

variable "model_sha256" {
  description = "Expected lowercase hex sha256 of the model (sha256sum bitnet-2b4t-prepared.gguf)."
  type        = string
  default     = ""
}

variable "function_url_auth_type" {
  description = "AWS_IAM (default, signed requests) or NONE (public, requires api_key)."
  type        = string
  default     = "AWS_IAM"
}

variable "api_key" {
  description = "Bearer token the API requires; needed when function_url_auth_type is NONE. Either this or allow_no_auth = true."
  type        = string
  default     = null
  sensitive   = true
}

variable "allow_no_auth" {
  description = "Explicit opt-in to run without api_key, relying on the function URL's AWS_IAM auth alone (not allowed with NONE)."
  type        = bool
  default     = false
}

variable "cors" {
  description = "CORS settings for the function URL (see the module's variable), null for none."
  type = object({
    allow_origins     = list(string)
    allow_methods     = optional(list(string), ["GET", "POST"])
    allow_headers     = optional(list(string), ["authorization", "content-type"])
    expose_headers    = optional(list(string), [])
    allow_credentials = optional(bool, false)
    max_age           = optional(number, 300)
  })
  default = null
}
