variable "name" {
  description = "Name of the Lambda function; also used for the IAM role, the log group and (with a random suffix) the model bucket."
  type        = string
  default     = "bitnet"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,56}$", var.name))
    error_message = "name must be 1-56 characters of letters, digits, '-' or '_' (the role name appends a suffix)."
  }
}

variable "package_type" {
  description = "Zip (default): the zip from `cargo lambda build` on the provided.al2023 runtime. Image: the container image built by infra/Dockerfile.lambda and pushed to ECR (image_uri); with model_in_image it carries the model, which Lambda reads lazily from the image instead of downloading it at cold start (docs/deploy.md, \"Zip or container image\")."
  type        = string
  default     = "Zip"
  nullable    = false

  validation {
    condition     = contains(["Zip", "Image"], var.package_type)
    error_message = "package_type must be \"Zip\" or \"Image\"."
  }
}

variable "lambda_zip_path" {
  description = "Path of the zip built by `cargo lambda build --release --output-format zip -p bitnet-lambda` (binary `bootstrap`). Relative paths are resolved from the directory terraform runs in. Only for package_type = \"Zip\"."
  type        = string
  default     = "target/lambda/bootstrap/bootstrap.zip"
}

variable "image_uri" {
  description = "ECR image of infra/Dockerfile.lambda, for package_type = \"Image\", preferably by digest (ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO@sha256:...). Lambda pulls only from ECR."
  type        = string
  default     = null

  validation {
    condition     = (var.package_type == "Image") == (var.image_uri != null)
    error_message = "Set image_uri exactly when package_type = \"Image\" (and leave it null for \"Zip\")."
  }

  validation {
    condition     = var.image_uri == null || can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com(\\.cn)?/[a-z0-9._/-]+(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$", var.image_uri))
    error_message = "image_uri must be an ECR image: ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG or @sha256:DIGEST."
  }
}

variable "model_in_image" {
  description = "The image carries the model (docker build --build-arg MODEL_SOURCE=image): BITNET_MODEL is left to the image, and no model bucket or S3 permission is created. Only with package_type = \"Image\"."
  type        = bool
  default     = false
  nullable    = false

  validation {
    condition     = !var.model_in_image || var.package_type == "Image"
    error_message = "model_in_image needs package_type = \"Image\" (a zip cannot hold a 1.2 GB model: 250 MB unzipped at most)."
  }
}

variable "architecture" {
  description = "Instruction set of the zip: x86_64 (cargo lambda build default) or arm64 (build with `--arm64`). The engine's SIMD kernels are x86_64-only (AVX2 / AVX-512); on arm64 it runs its portable scalar fallback, which is much slower per token, so arm64 (Graviton, ~20% cheaper per GB-second) costs more per token, not less. arm64 needs allow_scalar_arm64 = true until aarch64 kernels exist."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be \"x86_64\" or \"arm64\"."
  }

  validation {
    condition     = var.architecture != "arm64" || var.allow_scalar_arm64
    error_message = "architecture = \"arm64\" runs the engine's portable scalar kernels (its SIMD kernels are x86_64-only: AVX2 / AVX-512), which decode about 30x slower than x86_64 (0.77 vs 24.7 tok/s measured on a 2B4T-shaped model, docs/deploy.md), so Graviton's lower price per GB-second does not make it cheaper. Use x86_64, or set allow_scalar_arm64 = true to deploy arm64 anyway (see docs/deploy.md)."
  }
}

variable "allow_scalar_arm64" {
  description = "Acknowledges that architecture = \"arm64\" runs the engine's slow scalar fallback (no aarch64 SIMD kernels yet). Required for arm64; ignored for x86_64."
  type        = bool
  default     = false
  nullable    = false
}

variable "memory_size" {
  description = "Lambda memory in MB (CPU share grows with it: one vCPU per 1,769 MB). The 0.88 GB prepared model (1.19 GB official i2_s file) plus KV cache and activations fit in 4096 MB."
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
    condition     = var.ephemeral_storage_size >= (var.model_in_image ? 512 : 2048) && var.ephemeral_storage_size <= 10240
    error_message = "ephemeral_storage_size must be between 2048 and 10240 MB (the model alone is 1.19 GB), or from 512 MB with model_in_image (nothing is downloaded to /tmp)."
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
  default     = "models/bitnet-2b4t-prepared.gguf"

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

variable "embedding_model_key" {
  description = "Object key of an embedding model (bitnet-embedding-0.6b GGUF, ~0.7 GB) in the same bucket, served beside the chat model for /v1/embeddings (BITNET_EMBEDDING_MODEL). The role may read exactly this object too. Null: no embedding model. Size ephemeral_storage_size for both files."
  type        = string
  default     = null

  validation {
    condition     = var.embedding_model_key == null ? true : (length(var.embedding_model_key) > 0 && !can(regex("[*?]", var.embedding_model_key)) && var.embedding_model_key != var.model_key)
    error_message = "embedding_model_key must be a single object key (no wildcards), other than model_key."
  }
  validation {
    condition     = var.embedding_model_key == null || !var.model_in_image
    error_message = "embedding_model_key needs the model bucket (model_in_image creates none)."
  }
}

variable "embedding_model_sha256" {
  description = "BITNET_EMBEDDING_MODEL_SHA256: expected lowercase hex sha256 of the embedding model. Empty leaves it unset."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([0-9a-f]{64})?$", var.embedding_model_sha256))
    error_message = "embedding_model_sha256 must be empty or 64 lowercase hex characters."
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

  validation {
    condition     = var.function_url_auth_type != "NONE" || var.api_key != null
    error_message = "A public function URL (function_url_auth_type = \"NONE\") needs api_key, so that the API is not open to anyone (allow_no_auth only applies behind AWS_IAM)."
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
  description = "API_KEY: bearer token the HTTP API requires on every route but /, /health and /ready. Stored in the function configuration: pass kms_key_arn to encrypt it with your own key. Either this or allow_no_auth = true is required (the function refuses to start with neither)."
  type        = string
  default     = null
  sensitive   = true

  validation {
    condition     = var.api_key == null || try(length(trimspace(var.api_key)) > 0, false)
    error_message = "api_key must not be empty or blank (leave it null and set allow_no_auth = true to run without a key)."
  }
}

variable "allow_no_auth" {
  description = "Explicit opt-in to run the API without API_KEY (sets BITNET_ALLOW_NO_AUTH=1): only where something in front checks every caller, i.e. the function URL's AWS_IAM auth. Not allowed with function_url_auth_type = \"NONE\" (a public URL always needs api_key). Ignored when api_key is set."
  type        = bool
  default     = false
  nullable    = false

  validation {
    condition     = var.allow_no_auth || var.api_key != null
    error_message = "Set api_key (a bearer token clients must send), or allow_no_auth = true to rely on the function URL's AWS_IAM auth alone. The function refuses to start with neither."
  }
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
  description = "Cap on concurrent executions (reserved concurrency: free, a ceiling, not a warmer). Every cold start downloads the 1.2 GB model, so an uncapped burst multiplies S3 transfer, /tmp and GB-seconds; requests beyond the cap get 429 (throttled) instead. Default 10. Reserving needs an account concurrency quota of at least 100 + this value; on accounts with a smaller quota (new accounts can have 10), set null, which removes the cap (the account quota is then the only limit)."
  type        = number
  default     = 10

  validation {
    condition     = var.reserved_concurrency == null ? true : var.reserved_concurrency >= 1
    error_message = "reserved_concurrency must be null (no cap) or >= 1 (0 would disable the function)."
  }
}

variable "extra_environment" {
  description = "Additional environment variables (for example RUST_LOG). Must not contain secrets, nor API_KEY / BITNET_ALLOW_NO_AUTH (use api_key / allow_no_auth). BITNET_PARALLEL is fixed at 1 (one request per sandbox) and not taken from here."
  type        = map(string)
  default     = {}

  validation {
    condition     = length(setintersection(keys(var.extra_environment), ["API_KEY", "BITNET_ALLOW_NO_AUTH"])) == 0
    error_message = "extra_environment must not set API_KEY or BITNET_ALLOW_NO_AUTH: use the api_key (sensitive) and allow_no_auth variables."
  }
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}
