//! OpenAI request parsing and response shapes.
//!
//! Requests are parsed from a `serde_json::Value` by hand rather than by a derived
//! `Deserialize`, so that every error names the parameter at fault (as OpenAI's do) and
//! unknown fields are ignored.

use std::sync::Arc;

use bitnet_engine::generate::MAX_TOP_LOGPROBS;
use bitnet_engine::{ChatMessage, GenerateParams, Grammar, SamplingParams};
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// What to generate from: chat messages (templated by the tokenizer), text, or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Chat(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// A parsed `/v1/chat/completions` or `/v1/completions` request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub input: PromptInput,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices to generate (`n`), sharing one prompt pass.
    pub n: usize,
    /// The grammar every choice's text must follow (`response_format`, `json_schema`,
    /// `grammar`).
    pub grammar: Option<Arc<Grammar>>,
    /// Log-probabilities with this many alternatives per token (chat: `logprobs: true` and
    /// `top_logprobs`; completions: `logprobs: N`).
    pub logprobs: Option<usize>,
    /// Completions: the prompt comes back before the completion (with its own
    /// log-probabilities when `logprobs` is set).
    pub echo: bool,
}

/// Most choices one request may ask for: each takes a slot.
pub const MAX_CHOICES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// Parses a request body. `body` is the raw bytes: malformed JSON is a 400 too.
pub fn parse_request(endpoint: Endpoint, body: &[u8]) -> Result<CompletionRequest, ApiError> {
    parse_object(endpoint, &json_object(body)?)
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(ApiError::malformed_json)?;
    let Value::Object(obj) = value else {
        return Err(ApiError::invalid("The request body must be a JSON object."));
    };
    Ok(obj)
}

/// `POST /tokenize`, as llama-server shapes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizeRequest {
    pub content: String,
    /// Starts with the model's BOS token (llama-server's `add_special`; default false).
    pub add_special: bool,
    /// Each token as `{"id", "piece"}` instead of a bare id.
    pub with_pieces: bool,
}

pub fn parse_tokenize(body: &[u8]) -> Result<TokenizeRequest, ApiError> {
    let obj = json_object(body)?;
    let content = match field(&obj, "content") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(type_error("content", "a string")),
        None => {
            return Err(ApiError::invalid_param(
                "content",
                "Missing required parameter: 'content'.",
            ));
        }
    };
    // Special-token text in the content is always plain text here (a client's text must not
    // forge a turn boundary): say so rather than tokenize differently from what was asked.
    if opt_bool(&obj, "parse_special")? == Some(true) {
        return Err(ApiError::unsupported(
            "parse_special",
            "parse_special: true is not supported: special-token text in 'content' is \
             tokenized as plain text (use add_special for the BOS token).",
        ));
    }
    Ok(TokenizeRequest {
        content,
        add_special: opt_bool(&obj, "add_special")?.unwrap_or(false),
        with_pieces: opt_bool(&obj, "with_pieces")?.unwrap_or(false),
    })
}

/// What `/v1/embeddings` embeds: texts, or token ids used as given.
#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    Float,
    /// The little-endian f32 bytes, base64 (what the `openai` Python SDK asks for).
    Base64,
}

/// A parsed `POST /v1/embeddings` request.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRequest {
    pub model: Option<String>,
    pub input: EmbeddingInput,
    pub encoding_format: EncodingFormat,
    /// OpenAI's `dimensions`: only the model's own size is served (no truncation).
    pub dimensions: Option<usize>,
}

/// Most inputs one embeddings request may carry (OpenAI allows 2048; each is a forward pass
/// of its own length here).
pub const MAX_EMBEDDING_INPUTS: usize = 256;

/// `POST /v1/embeddings`: `input` a string, strings, token ids, or lists of token ids.
pub fn parse_embeddings(body: &[u8]) -> Result<EmbeddingRequest, ApiError> {
    let obj = json_object(body)?;
    let ids_of = |v: &Value, at: &str| -> Result<Vec<u32>, ApiError> {
        let Value::Array(items) = v else {
            return Err(type_error(at, "an array of token ids"));
        };
        items
            .iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| type_error(at, "an array of token ids (non-negative integers)"))
            })
            .collect()
    };
    let input = match field(&obj, "input") {
        None => {
            return Err(ApiError::invalid_param(
                "input",
                "Missing required parameter: 'input'.",
            ));
        }
        Some(Value::String(s)) => EmbeddingInput::Texts(vec![s.clone()]),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ApiError::invalid_param(
                "input",
                "'input' must not be an empty array.",
            ));
        }
        Some(Value::Array(items)) => match &items[0] {
            Value::String(_) => EmbeddingInput::Texts(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| type_error(&format!("input[{i}]"), "a string"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Value::Number(_) => EmbeddingInput::Tokens(vec![ids_of(
                field(&obj, "input").expect("present"),
                "input",
            )?]),
            Value::Array(_) => EmbeddingInput::Tokens(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ids_of(v, &format!("input[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            _ => {
                return Err(type_error(
                    "input",
                    "a string, an array of strings, an array of token ids, or an array of arrays of token ids",
                ));
            }
        },
        Some(_) => {
            return Err(type_error(
                "input",
                "a string, an array of strings, an array of token ids, or an array of arrays of token ids",
            ));
        }
    };
    let n = match &input {
        EmbeddingInput::Texts(t) => t.len(),
        EmbeddingInput::Tokens(t) => t.len(),
    };
    if n > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::invalid_param(
            "input",
            format!("At most {MAX_EMBEDDING_INPUTS} inputs per request; got {n}."),
        ));
    }
    let empty = match &input {
        EmbeddingInput::Texts(t) => t.iter().position(String::is_empty),
        EmbeddingInput::Tokens(t) => t.iter().position(Vec::is_empty),
    };
    if let Some(i) = empty {
        return Err(ApiError::invalid_param(
            &format!("input[{i}]"),
            format!("input[{i}] is empty: an embedding needs at least one token."),
        ));
    }
    let encoding_format = match field(&obj, "encoding_format") {
        None => EncodingFormat::Float,
        Some(Value::String(f)) if f == "float" => EncodingFormat::Float,
        Some(Value::String(f)) if f == "base64" => EncodingFormat::Base64,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                "'encoding_format' must be 'float' or 'base64'.",
            ));
        }
    };
    let model = match field(&obj, "model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(type_error("model", "a string")),
    };
    Ok(EmbeddingRequest {
        model,
        input,
        encoding_format,
        dimensions: opt_uint(&obj, "dimensions")?,
    })
}

/// `POST /detokenize`: the ids of `tokens` (their range is checked against the model).
pub fn parse_detokenize(body: &[u8]) -> Result<Vec<u32>, ApiError> {
    let obj = json_object(body)?;
    let items = match field(&obj, "tokens") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(type_error("tokens", "an array of token ids")),
        None => {
            return Err(ApiError::invalid_param(
                "tokens",
                "Missing required parameter: 'tokens'.",
            ));
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        "tokens",
                        format!("tokens[{i}] is not a token id (a non-negative integer)."),
                    )
                })
        })
        .collect()
}

fn parse_object(
    endpoint: Endpoint,
    obj: &Map<String, Value>,
) -> Result<CompletionRequest, ApiError> {
    reject_unsupported(obj)?;
    let input = match endpoint {
        Endpoint::Chat => PromptInput::Chat(parse_messages(field(obj, "messages").ok_or_else(
            || ApiError::invalid_param("messages", "Missing required parameter: 'messages'."),
        )?)?),
        Endpoint::Completions => parse_prompt(field(obj, "prompt").ok_or_else(|| {
            ApiError::invalid_param("prompt", "Missing required parameter: 'prompt'.")
        })?)?,
    };
    // `max_completion_tokens` is the newer name; when both are present it wins.
    let max_tokens = match opt_uint(obj, "max_completion_tokens")? {
        Some(v) => Some(v),
        None => opt_uint(obj, "max_tokens")?,
    };
    let echo = match (endpoint, opt_bool(obj, "echo")?) {
        (_, None | Some(false)) => false,
        (Endpoint::Completions, Some(true)) => true,
        (Endpoint::Chat, Some(true)) => {
            return Err(ApiError::unsupported(
                "echo",
                "echo is a /v1/completions parameter.",
            ));
        }
    };
    // `max_tokens: 0` with `echo` scores the prompt and generates nothing.
    if max_tokens == Some(0) && !echo {
        let name = if field(obj, "max_completion_tokens").is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(ApiError::invalid_param(
            name,
            format!("'{name}' must be at least 1."),
        ));
    }
    let temperature = opt_f32(obj, "temperature")?;
    let top_p = opt_f32(obj, "top_p")?;
    let min_p = opt_f32(obj, "min_p")?;
    let presence_penalty = opt_f32(obj, "presence_penalty")?;
    let frequency_penalty = opt_f32(obj, "frequency_penalty")?;
    let repeat_penalty = opt_f32(obj, "repeat_penalty")?;
    let top_k = opt_uint(obj, "top_k")?;
    let seed = match field(obj, "seed") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| type_error("seed", "an integer"))?,
        ),
    };
    let stop = parse_stop(field(obj, "stop"))?;
    let stream = opt_bool(obj, "stream")?.unwrap_or(false);
    let include_usage = match field(obj, "stream_options") {
        None => false,
        Some(Value::Object(so)) => match so.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(type_error("stream_options.include_usage", "a boolean")),
        },
        Some(_) => return Err(type_error("stream_options", "an object")),
    };
    let model = match field(obj, "model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(type_error("model", "a string")),
    };
    let n = match field(obj, "n") {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_CHOICES as u64).contains(&n) => n as usize,
            Some(n) => {
                return Err(ApiError::invalid_param(
                    "n",
                    format!("Invalid 'n': must be between 1 and {MAX_CHOICES}; got {n}."),
                ));
            }
            None => return Err(type_error("n", "an integer")),
        },
    };
    let logprobs = parse_logprobs(endpoint, obj)?;
    if echo && logprobs.is_some() && stream {
        return Err(ApiError::unsupported(
            "echo",
            "echo with logprobs is not supported when streaming; ask without stream.",
        ));
    }
    let grammar = parse_constraint(obj)?;
    let req = CompletionRequest {
        model,
        input,
        max_tokens,
        temperature,
        top_p,
        top_k,
        min_p,
        repeat_penalty,
        presence_penalty,
        frequency_penalty,
        seed,
        stop,
        stream,
        include_usage,
        n,
        grammar,
        logprobs,
        echo,
    };
    // The engine decides what it can compute with; a request it would refuse is a 400 now,
    // before the request waits for the engine.
    req.generate_params(req.max_tokens.unwrap_or(1))
        .validate()?;
    Ok(req)
}

impl CompletionRequest {
    /// The engine's parameters for this request, unset ones at the engine's defaults.
    pub fn generate_params(&self, max_tokens: usize) -> GenerateParams {
        let d = SamplingParams::default();
        GenerateParams {
            max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature.unwrap_or(d.temperature),
                top_k: self.top_k.unwrap_or(d.top_k),
                top_p: self.top_p.unwrap_or(d.top_p),
                min_p: self.min_p.unwrap_or(d.min_p),
                repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
                penalty_last_n: d.penalty_last_n,
                presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
                frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
                seed: self.seed,
            },
            stop_strings: self.stop.clone(),
            // The model's own end-of-generation ids.
            stop_ids: None,
            grammar: self.grammar.clone(),
            // A prompt to echo with nothing generated is still read through the engine's
            // scoring path (which is what allows `max_tokens: 0`).
            logprobs: self
                .logprobs
                .or((self.echo && max_tokens == 0).then_some(0)),
            prompt_logprobs: self.echo && (self.logprobs.is_some() || max_tokens == 0),
            // The server's setting, not the request's (`generate::prepare`).
            draft_max: 0,
        }
    }
}

/// `logprobs` / `top_logprobs` as each endpoint spells them: the number of alternatives per
/// token, `None` when log-probabilities are off.
fn parse_logprobs(endpoint: Endpoint, obj: &Map<String, Value>) -> Result<Option<usize>, ApiError> {
    let top = |name: &str, v: &Value| -> Result<usize, ApiError> {
        match v.as_u64() {
            Some(n) if n as usize <= MAX_TOP_LOGPROBS => Ok(n as usize),
            _ => Err(ApiError::invalid_param(
                name,
                format!("'{name}' must be an integer between 0 and {MAX_TOP_LOGPROBS}."),
            )),
        }
    };
    match endpoint {
        Endpoint::Chat => {
            let on = opt_bool(obj, "logprobs")?.unwrap_or(false);
            match field(obj, "top_logprobs") {
                None => Ok(on.then_some(0)),
                Some(v) => {
                    let n = top("top_logprobs", v)?;
                    if !on {
                        return Err(ApiError::invalid_param(
                            "top_logprobs",
                            "'top_logprobs' needs 'logprobs': true.",
                        ));
                    }
                    Ok(Some(n))
                }
            }
        }
        Endpoint::Completions => {
            if field(obj, "top_logprobs").is_some() {
                return Err(ApiError::unsupported(
                    "top_logprobs",
                    "On /v1/completions the number of alternatives is 'logprobs': N.",
                ));
            }
            match field(obj, "logprobs") {
                None | Some(Value::Bool(false)) => Ok(None),
                Some(v) => top("logprobs", v).map(Some),
            }
        }
    }
}

/// The output constraint: `response_format` (`json_object`, optionally with llama-server's
/// `schema`; `json_schema`), or llama-server's `json_schema` / `grammar`; at most one.
fn parse_constraint(obj: &Map<String, Value>) -> Result<Option<Arc<Grammar>>, ApiError> {
    let schema_error = |param: &str, e: bitnet_engine::grammar::json_schema::SchemaError| {
        let message = if e.keyword.is_empty() {
            format!("Invalid '{param}': {}.", e.message)
        } else {
            format!(
                "Invalid '{param}': {} (keyword '{}').",
                e.message, e.keyword
            )
        };
        ApiError::invalid_param(param, message).with_code("unsupported_schema")
    };
    let mut found: Vec<(&str, Grammar)> = Vec::new();
    if let Some(rf) = field(obj, "response_format") {
        let Value::Object(rf) = rf else {
            return Err(type_error("response_format", "an object"));
        };
        match rf.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => match rf.get("schema").filter(|v| !v.is_null()) {
                None => found.push(("response_format", Grammar::json_object())),
                Some(schema) => found.push((
                    "response_format",
                    Grammar::from_json_schema(schema)
                        .map_err(|e| schema_error("response_format.schema", e))?,
                )),
            },
            Some("json_schema") => {
                let Some(Value::Object(js)) = rf.get("json_schema") else {
                    return Err(ApiError::invalid_param(
                        "response_format.json_schema",
                        "Missing required parameter: 'response_format.json_schema'.",
                    ));
                };
                let schema = js.get("schema").cloned().unwrap_or(Value::Bool(true));
                found.push((
                    "response_format",
                    Grammar::from_json_schema(&schema)
                        .map_err(|e| schema_error("response_format.json_schema.schema", e))?,
                ));
            }
            _ => {
                return Err(ApiError::invalid_param(
                    "response_format.type",
                    "'response_format.type' must be 'text', 'json_object' or 'json_schema'.",
                ));
            }
        }
    }
    if let Some(schema) = field(obj, "json_schema") {
        found.push((
            "json_schema",
            Grammar::from_json_schema(schema).map_err(|e| schema_error("json_schema", e))?,
        ));
    }
    match field(obj, "grammar") {
        None => {}
        Some(Value::String(g)) if g.trim().is_empty() => {}
        Some(Value::String(g)) => found.push((
            "grammar",
            Grammar::parse(g).map_err(|e| {
                ApiError::invalid_param("grammar", format!("Invalid 'grammar': {e}."))
            })?,
        )),
        Some(_) => return Err(type_error("grammar", "a string (GBNF)")),
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop().map(|(_, g)| Arc::new(g))),
        _ => Err(ApiError::invalid_param(
            found[1].0,
            format!(
                "'{}' and '{}' both constrain the output; give one.",
                found[0].0, found[1].0
            ),
        )),
    }
}

/// A field, treating an explicit `null` as absent (OpenAI's SDKs send nulls for unset options).
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn type_error(param: &str, expected: &str) -> ApiError {
    ApiError::invalid_param(
        param,
        format!("Invalid type for '{param}': expected {expected}."),
    )
    .with_code("invalid_type")
}

fn opt_bool(obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(type_error(name, "a boolean")),
    }
}

fn opt_uint(obj: &Map<String, Value>, name: &str) -> Result<Option<usize>, ApiError> {
    match field(obj, name) {
        None => Ok(None),
        Some(v) => {
            let n = v.as_u64().ok_or_else(|| {
                if v.as_i64().is_some() {
                    ApiError::invalid_param(name, format!("'{name}' must not be negative."))
                } else {
                    type_error(name, "an integer")
                }
            })?;
            Ok(Some(usize::try_from(n).unwrap_or(usize::MAX)))
        }
    }
}

/// A number parameter; its range is the engine's to check (`GenerateParams::validate`).
fn opt_f32(obj: &Map<String, Value>, name: &str) -> Result<Option<f32>, ApiError> {
    match field(obj, name) {
        None => Ok(None),
        Some(v) => {
            let x = v.as_f64().ok_or_else(|| type_error(name, "a number"))?;
            Ok(Some(x as f32))
        }
    }
}

/// Parameters this server does not implement: a 400 naming the parameter, unless the value is
/// the one that means "off".
fn reject_unsupported(obj: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(v) = field(obj, "best_of")
        && v.as_u64() != Some(1)
    {
        return Err(ApiError::unsupported(
            "best_of",
            "Only best_of=1 is supported.",
        ));
    }
    for name in ["tools", "functions"] {
        if field(obj, name).is_some_and(|v| !matches!(v, Value::Array(a) if a.is_empty())) {
            return Err(ApiError::unsupported(
                name,
                format!(
                    "'{name}' (tool / function calling) is not supported by this model server."
                ),
            ));
        }
    }
    for name in ["tool_choice", "function_call"] {
        if field(obj, name).is_some_and(|v| v != "none" && v != "auto") {
            return Err(ApiError::unsupported(
                name,
                format!(
                    "'{name}' (tool / function calling) is not supported by this model server."
                ),
            ));
        }
    }
    if field(obj, "logit_bias").is_some_and(|v| !matches!(v, Value::Object(m) if m.is_empty())) {
        return Err(ApiError::unsupported(
            "logit_bias",
            "logit_bias is not supported.",
        ));
    }
    if field(obj, "suffix").is_some_and(|v| v != "") {
        return Err(ApiError::unsupported(
            "suffix",
            "suffix (insertion) is not supported.",
        ));
    }
    if field(obj, "audio").is_some()
        || field(obj, "modalities").is_some_and(|v| v != &json!(["text"]))
    {
        return Err(ApiError::unsupported(
            "modalities",
            "Only text output is supported.",
        ));
    }
    Ok(())
}

fn parse_messages(v: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let Value::Array(items) = v else {
        return Err(type_error("messages", "an array"));
    };
    if items.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "'messages' must contain at least one message.",
        )
        .with_code("empty_array"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let p = |f: &str| format!("messages[{i}].{f}");
        let Value::Object(m) = m else {
            return Err(type_error(&format!("messages[{i}]"), "an object"));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.to_ascii_lowercase(),
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_param(
                    &p("role"),
                    format!("Missing required parameter: '{}'.", p("role")),
                ));
            }
            Some(_) => return Err(type_error(&p("role"), "a string")),
        };
        let role = match role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" | "function" => {
                return Err(ApiError::unsupported(
                    &p("role"),
                    "Tool messages are not supported.",
                ));
            }
            other => {
                return Err(ApiError::invalid_param(
                    &p("role"),
                    format!(
                        "Invalid value '{other}' for '{}': expected system, developer, user or assistant.",
                        p("role")
                    ),
                ));
            }
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            // An assistant turn that only carried tool calls has null content.
            None | Some(Value::Null) if role == "assistant" => String::new(),
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_param(
                    &p("content"),
                    format!("Missing required parameter: '{}'.", p("content")),
                ));
            }
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    let pp = format!("messages[{i}].content[{j}]");
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => match part.get("text") {
                            Some(Value::String(t)) => text.push_str(t),
                            _ => return Err(type_error(&format!("{pp}.text"), "a string")),
                        },
                        Some(other) => {
                            return Err(ApiError::unsupported(
                                &format!("{pp}.type"),
                                format!(
                                    "Content parts of type '{other}' are not supported: this model reads text only."
                                ),
                            ));
                        }
                        None => return Err(type_error(&format!("{pp}.type"), "a string")),
                    }
                }
                text
            }
            Some(_) => {
                return Err(type_error(
                    &p("content"),
                    "a string or an array of content parts",
                ));
            }
        };
        out.push(ChatMessage {
            role: role.to_string(),
            content,
        });
    }
    Ok(out)
}

/// `prompt`: a string, an array of one string, an array of token ids, or an array of one array
/// of token ids. Several prompts would need several choices (like n>1): rejected.
fn parse_prompt(v: &Value) -> Result<PromptInput, ApiError> {
    fn ids(items: &[Value]) -> Option<Vec<u32>> {
        items
            .iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect()
    }
    match v {
        Value::String(s) => Ok(PromptInput::Text(s.clone())),
        Value::Array(items) => match items.as_slice() {
            [] => Err(ApiError::invalid_param(
                "prompt",
                "'prompt' must not be empty.",
            )),
            [Value::String(s)] => Ok(PromptInput::Text(s.clone())),
            [Value::Array(inner)] => ids(inner).map(PromptInput::Tokens).ok_or_else(|| {
                type_error(
                    "prompt",
                    "a string, an array of strings or an array of token ids",
                )
            }),
            [Value::String(_), ..] | [Value::Array(_), ..] => Err(ApiError::unsupported(
                "prompt",
                "Only one prompt per request is supported (send several requests).",
            )),
            _ => ids(items).map(PromptInput::Tokens).ok_or_else(|| {
                type_error(
                    "prompt",
                    "a string, an array of strings or an array of token ids",
                )
            }),
        },
        _ => Err(type_error(
            "prompt",
            "a string, an array of strings or an array of token ids",
        )),
    }
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stops = match v {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, s) in items.iter().enumerate() {
                match s {
                    Value::String(s) => out.push(s.clone()),
                    _ => return Err(type_error(&format!("stop[{i}]"), "a string")),
                }
            }
            out
        }
        Some(_) => return Err(type_error("stop", "a string or an array of strings")),
    };
    Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<CompletionRequest, ApiError> {
        parse_request(Endpoint::Chat, body.as_bytes())
    }
    fn comp(body: &str) -> Result<CompletionRequest, ApiError> {
        parse_request(Endpoint::Completions, body.as_bytes())
    }
    fn param_of(
        r: Result<CompletionRequest, ApiError>,
    ) -> (u16, Option<String>, Option<&'static str>) {
        let e = r.unwrap_err();
        (e.status.as_u16(), e.param, e.code)
    }

    #[test]
    fn full_chat_request() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],
            "max_completion_tokens":5,"max_tokens":9,"temperature":0,"top_p":0.5,"seed":7,"stop":"\n",
            "presence_penalty":0.1,"frequency_penalty":-0.1,"stream":true,"stream_options":{"include_usage":true},
            "n":1,"logprobs":false,"user":"ignored","unknown_field":{"x":1},"tools":[],"response_format":{"type":"text"}}"#,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(
            r.input,
            PromptInput::Chat(vec![
                ChatMessage {
                    role: "system".into(),
                    content: "be brief".into()
                },
                ChatMessage {
                    role: "user".into(),
                    content: "hi".into()
                },
            ])
        );
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.temperature, Some(0.0));
        assert_eq!(r.top_p, Some(0.5));
        assert_eq!(r.seed, Some(7));
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn nulls_are_absent() {
        let r = chat(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":null,"stop":null,"seed":null,"stream":null,"stream_options":null}"#).unwrap();
        assert_eq!(r.max_tokens, None);
        assert!(r.stop.is_empty() && !r.stream);
    }

    #[test]
    fn prompt_forms() {
        assert_eq!(
            comp(r#"{"prompt":"abc"}"#).unwrap().input,
            PromptInput::Text("abc".into())
        );
        assert_eq!(
            comp(r#"{"prompt":["abc"]}"#).unwrap().input,
            PromptInput::Text("abc".into())
        );
        assert_eq!(
            comp(r#"{"prompt":[1,2,3]}"#).unwrap().input,
            PromptInput::Tokens(vec![1, 2, 3])
        );
        assert_eq!(
            comp(r#"{"prompt":[[4,5]]}"#).unwrap().input,
            PromptInput::Tokens(vec![4, 5])
        );
        assert_eq!(
            param_of(comp(r#"{"prompt":["a","b"]}"#)).1.as_deref(),
            Some("prompt")
        );
        assert_eq!(param_of(comp(r#"{"prompt":[1,"b"]}"#)).0, 400);
        assert_eq!(param_of(comp(r#"{"prompt":[-1]}"#)).0, 400);
        assert_eq!(
            param_of(comp(r#"{"prompt":5}"#)).1.as_deref(),
            Some("prompt")
        );
        assert_eq!(param_of(comp(r#"{}"#)).1.as_deref(), Some("prompt"));
    }

    #[test]
    fn malformed_and_wrong_types() {
        assert_eq!(
            param_of(chat("{not json")),
            (400, None, Some("invalid_json"))
        );
        assert_eq!(param_of(chat("")).0, 400);
        assert_eq!(param_of(chat("[1,2]")).0, 400);
        assert_eq!(
            param_of(chat(r#"{"messages":"hi"}"#)).1.as_deref(),
            Some("messages")
        );
        assert_eq!(
            param_of(chat(r#"{"messages":[]}"#)),
            (400, Some("messages".into()), Some("empty_array"))
        );
        assert_eq!(param_of(chat(r#"{}"#)).1.as_deref(), Some("messages"));
        assert_eq!(
            param_of(chat(r#"{"messages":[{"role":"user"}]}"#))
                .1
                .as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            param_of(chat(r#"{"messages":[{"role":"wizard","content":"x"}]}"#))
                .1
                .as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param_of(chat(r#"{"messages":[{"role":"user","content":1}]}"#))
                .1
                .as_deref(),
            Some("messages[0].content")
        );
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        for (extra, param) in [
            (r#""max_tokens":"5""#, "max_tokens"),
            (r#""max_tokens":-1"#, "max_tokens"),
            (r#""max_tokens":0"#, "max_tokens"),
            (r#""max_tokens":1.5"#, "max_tokens"),
            (r#""temperature":"hot""#, "temperature"),
            (r#""temperature":3"#, "temperature"),
            (r#""top_p":2"#, "top_p"),
            (r#""seed":"x""#, "seed"),
            (r#""stop":5"#, "stop"),
            (r#""stop":["a",1]"#, "stop[1]"),
            (r#""stop":["a","b","c","d","e"]"#, "stop"),
            (r#""stream":"yes""#, "stream"),
            (
                r#""stream_options":{"include_usage":1}"#,
                "stream_options.include_usage",
            ),
            (r#""model":3"#, "model"),
            (r#""presence_penalty":5"#, "presence_penalty"),
        ] {
            let (status, p, _) = param_of(chat(&format!("{{{m},{extra}}}")));
            assert_eq!((status, p.as_deref()), (400, Some(param)), "{extra}");
        }
    }

    #[test]
    fn logprobs_and_echo_as_each_endpoint_spells_them() {
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        let r = chat(&format!(r#"{{{m},"logprobs":true,"top_logprobs":3}}"#)).unwrap();
        assert_eq!(r.logprobs, Some(3));
        assert_eq!(
            chat(&format!(r#"{{{m},"logprobs":true}}"#))
                .unwrap()
                .logprobs,
            Some(0)
        );
        assert_eq!(
            chat(&format!(r#"{{{m},"logprobs":false}}"#))
                .unwrap()
                .logprobs,
            None
        );
        for (extra, param) in [
            (r#""top_logprobs":2"#, "top_logprobs"),
            (r#""logprobs":true,"top_logprobs":21"#, "top_logprobs"),
            (r#""logprobs":true,"top_logprobs":-1"#, "top_logprobs"),
            (r#""logprobs":3"#, "logprobs"),
        ] {
            assert_eq!(
                param_of(chat(&format!("{{{m},{extra}}}"))).1.as_deref(),
                Some(param),
                "{extra}"
            );
        }
        let r = comp(r#"{"prompt":"x","logprobs":5,"echo":true,"max_tokens":0}"#).unwrap();
        assert_eq!((r.logprobs, r.echo, r.max_tokens), (Some(5), true, Some(0)));
        let p = r.generate_params(0);
        assert!(p.prompt_logprobs && p.logprobs == Some(5));
        // Echo alone with nothing to generate: the prompt is still read (and scored).
        let p = comp(r#"{"prompt":"x","echo":true,"max_tokens":0}"#)
            .unwrap()
            .generate_params(0);
        assert!(p.prompt_logprobs);
        assert!(
            !comp(r#"{"prompt":"x","echo":true}"#)
                .unwrap()
                .generate_params(4)
                .prompt_logprobs
        );
        for (body, param) in [
            (r#"{"prompt":"x","logprobs":21}"#, "logprobs"),
            (r#"{"prompt":"x","top_logprobs":2}"#, "top_logprobs"),
            (r#"{"prompt":"x","max_tokens":0}"#, "max_tokens"),
            (
                r#"{"prompt":"x","echo":true,"logprobs":1,"stream":true}"#,
                "echo",
            ),
        ] {
            assert_eq!(param_of(comp(body)).1.as_deref(), Some(param), "{body}");
        }
    }

    #[test]
    fn output_constraints_compile_or_are_refused_by_name() {
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        for extra in [
            r#""response_format":{"type":"json_object"}"#,
            r#""response_format":{"type":"json_object","schema":{"type":"object"}}"#,
            r#""response_format":{"type":"json_schema","json_schema":{"name":"x","strict":true,"schema":{"type":"object","properties":{"a":{"type":"string"}},"required":["a"],"additionalProperties":false}}}"#,
            r#""json_schema":{"type":"array","items":{"type":"integer"}}"#,
            r#""grammar":"root ::= \"yes\" | \"no\"""#,
        ] {
            let r = chat(&format!("{{{m},{extra}}}")).unwrap();
            assert!(r.grammar.is_some(), "{extra}");
            assert!(r.generate_params(4).grammar.is_some());
        }
        assert!(
            chat(&format!(
                r#"{{{m},"response_format":{{"type":"text"}},"grammar":""}}"#
            ))
            .unwrap()
            .grammar
            .is_none()
        );
        for (extra, param, says) in [
            (
                r#""response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"string","pattern":"a+"}}}"#,
                "response_format.json_schema.schema",
                "'pattern'",
            ),
            (
                r#""response_format":{"type":"json_schema"}"#,
                "response_format.json_schema",
                "Missing",
            ),
            (
                r#""response_format":{"type":"yaml"}"#,
                "response_format.type",
                "json_schema",
            ),
            (
                r#""json_schema":{"minimum":1,"type":"number"}"#,
                "json_schema",
                "'minimum'",
            ),
            (
                r#""grammar":"root ::= undefined""#,
                "grammar",
                "undefined rule",
            ),
            (
                r#""grammar":"root ::= root \"x\"""#,
                "grammar",
                "reach itself",
            ),
            (r#""grammar":7"#, "grammar", "GBNF"),
            (
                r#""json_schema":{},"grammar":"root ::= \"a\"""#,
                "grammar",
                "both constrain",
            ),
        ] {
            let e = chat(&format!("{{{m},{extra}}}")).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.param.as_deref()),
                (400, Some(param)),
                "{extra}"
            );
            assert!(e.message.contains(says), "{extra}: {}", e.message);
        }
        // The completions endpoint takes them too (llama-server does).
        assert!(
            comp(r#"{"prompt":"x","json_schema":{"type":"boolean"}}"#)
                .unwrap()
                .grammar
                .is_some()
        );
    }

    #[test]
    fn unsupported_parameters_are_named() {
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        for (extra, param) in [
            (
                r#""tools":[{"type":"function","function":{"name":"f"}}]"#,
                "tools",
            ),
            (r#""tool_choice":"required""#, "tool_choice"),
            (r#""functions":[{"name":"f"}]"#, "functions"),
            (r#""echo":true"#, "echo"),
            (r#""logit_bias":{"50256":-100}"#, "logit_bias"),
        ] {
            let (status, p, code) = param_of(chat(&format!("{{{m},{extra}}}")));
            assert_eq!(
                (status, p.as_deref(), code),
                (400, Some(param), Some("unsupported_parameter")),
                "{extra}"
            );
        }
        assert_eq!(
            param_of(comp(r#"{"prompt":"x","best_of":3}"#)).1.as_deref(),
            Some("best_of")
        );
        comp(r#"{"prompt":"x","logprobs":null,"echo":false,"best_of":1,"suffix":null}"#).unwrap();
        let e = chat(r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
    }
}
