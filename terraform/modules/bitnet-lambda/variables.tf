variable "name" {
  description = "Name of the Lambda function; also used for the IAM role, the log group and (with a random suffix) the model bucket."
  type        = string
  default     = "bitnet"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,56}$", var.name))
    error_message = "name must be 1-56 characters of letters, digits, '-' or '_' (the role name appends a suffix)."
  }
}

variable "lambda_zip_path" {
  description = "Path of the zip built by `cargo lambda build --release --output-format zip -p bitnet-lambda` (binary `bootstrap`). Relative paths are resolved from the directory terraform runs in."
  type        = string
  default     = "target/lambda/bootstrap/bootstrap.zip"
}

variable "architecture" {
  description = "Instruction set of the zip: x86_64 (cargo lambda build default) or arm64 (build with `--arm64`; Graviton is ~20% cheaper per GB-second)."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be \"x86_64\" or \"arm64\"."
  }
}

variable "memory_size" {
  description = "Lambda memory in MB (CPU share grows with it: one vCPU per 1,769 MB). The 1.19 GB i2_s model plus KV cache and activations fit in 4096 MB."
  type        = number
  default     = 4096

  validation {
    condition     = var.memory_size >= 2048 && var.memory_size <= 10240
    error_message = "memory_size must be between 2048 (smallest size that holds the model) and 10240 MB."
  }
}

variable "ephemeral_storage_size" {
  description = "Size of /tmp in MB. The model (1.19 GB) is cached in /tmp/bitnet-models; the default leaves headroom for a download in progress next to a cached copy."
  type        = number
  default     = 3072

  validation {
    condition     = var.ephemeral_storage_size >= 2048 && var.ephemeral_storage_size <= 10240
    error_message = "ephemeral_storage_size must be between 2048 and 10240 MB (the model alone is 1.19 GB)."
  }
}

variable "timeout" {
  description = "Function timeout in seconds (Lambda maximum 900). Generation streams through the function URL, which is not cut at 30 s like API Gateway."
  type        = number
  default     = 900

  validation {
    condition     = var.timeout >= 1 && var.timeout <= 900
    error_message = "timeout must be between 1 and 900 seconds."
  }
}

variable "threads" {
  description = "BITNET_THREADS: worker threads for the forward pass. null leaves it unset, and the binary uses all visible cores."
  type        = number
  default     = null
}

variable "model_storage" {
  description = "BITNET_MODEL_STORAGE: disk (cache in /tmp and mmap), memory, or auto."
  type        = string
  default     = "disk"

  validation {
    condition     = contains(["disk", "memory", "auto"], var.model_storage)
    error_message = "model_storage must be disk, memory or auto."
  }
}

variable "create_bucket" {
  description = "Create a private, encrypted, versioned S3 bucket for models. Set false to use an existing bucket named by bucket_name."
  type        = bool
  default     = true
}

variable "bucket_name" {
  description = "Name of the model bucket. With create_bucket = true and null, a name is generated from var.name; with create_bucket = false it must name an existing bucket."
  type        = string
  default     = null
}

variable "model_key" {
  description = "Object key of the GGUF model inside the bucket. The function role may read exactly this object and nothing else."
  type        = string
  default     = "models/ggml-model-i2_s.gguf"

  validation {
    condition     = length(var.model_key) > 0 && !can(regex("[*?]", var.model_key))
    error_message = "model_key must be a single object key (no wildcards)."
  }
}

variable "model_sha256" {
  description = "BITNET_MODEL_SHA256: expected lowercase hex sha256 of the model. Empty leaves it unset (the loader then falls back to the object's sha256 metadata, if any)."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([0-9a-f]{64})?$", var.model_sha256))
    error_message = "model_sha256 must be empty or 64 lowercase hex characters."
  }
}

variable "model_kms_key_arn" {
  description = "Only for an existing bucket encrypted with a customer-managed KMS key: ARN of that key, so the role may kms:Decrypt through S3. Not needed for the bucket this module creates (SSE-KMS with the AWS managed aws/s3 key)."
  type        = string
  default     = null
}

variable "function_url_auth_type" {
  description = "Function URL authorization: AWS_IAM (callers sign with SigV4 and need lambda:InvokeFunctionUrl) or NONE (public; protect it with api_key)."
  type        = string
  default     = "AWS_IAM"

  validation {
    condition     = contains(["AWS_IAM", "NONE"], var.function_url_auth_type)
    error_message = "function_url_auth_type must be AWS_IAM or NONE."
  }
}

variable "cors" {
  description = "CORS for the function URL; null disables CORS headers."
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

variable "api_key" {
  description = "API_KEY: optional bearer token the HTTP API requires. Stored in the function configuration: pass kms_key_arn to encrypt it with your own key."
  type        = string
  default     = null
  sensitive   = true
}

variable "kms_key_arn" {
  description = "Optional customer-managed KMS key for the environment variables and the log group. null uses AWS-owned keys (a customer-managed key costs about 1 USD a month even when idle)."
  type        = string
  default     = null
}

variable "log_retention_days" {
  description = "Retention of the function's CloudWatch log group in days."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ... 3653)."
  }
}

variable "log_level" {
  description = "Application log level passed to the Lambda logging config (JSON logs)."
  type        = string
  default     = "INFO"
}

variable "tracing_mode" {
  description = "X-Ray tracing: Active samples requests (billed per trace, nothing when idle) or PassThrough."
  type        = string
  default     = "Active"

  validation {
    condition     = contains(["Active", "PassThrough"], var.tracing_mode)
    error_message = "tracing_mode must be Active or PassThrough."
  }
}

variable "reserved_concurrency" {
  description = "Optional cap on concurrent executions (a cost ceiling, not a warmer: reserved concurrency costs nothing). null leaves the function in the unreserved pool; new accounts with a quota of 10 cannot reserve any."
  type        = number
  default     = null

  validation {
    condition     = var.reserved_concurrency == null ? true : var.reserved_concurrency >= 1
    error_message = "reserved_concurrency must be null or >= 1 (0 would disable the function)."
  }
}

variable "extra_environment" {
  description = "Additional environment variables (for example RUST_LOG). Must not contain secrets."
  type        = map(string)
  default     = {}
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
