//! `POST /v1/embeddings` (OpenAI's shape) for an embedding model: texts (the end-of-text
//! token appended) or token ids (used as given), all read together; `float` or `base64`
//! vectors; `usage`. A generative model answers 400 naming `model`.

use std::time::Instant;

use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bitnet_engine::{EngineError, Interrupt, StopReason};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::generate::generation_deadline;
use crate::openai::{EmbeddingInput, EmbeddingRequest, EncodingFormat};
use crate::state::{Admission, AppState, panic_message};

/// Cancels the embedding when the handler's future is dropped (the client left).
struct CancelOnDrop(Interrupt);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

pub async fn embeddings(
    state: AppState,
    req: EmbeddingRequest,
    admission: Admission,
    request_deadline: Option<Instant>,
) -> Result<Response, ApiError> {
    // The embedding model served beside the chat model, else the one model; any name in
    // `model` is that model (one model of each kind), except the chat model's own.
    if let Some(name) = &req.model
        && state.is_chat_model_name_beside_an_embedding_model(name)
    {
        return Err(ApiError::invalid_param(
            "model",
            format!("The model '{name}' generates text; it has no embeddings."),
        ));
    }
    let (engine, model_id) = state.embedding_engine().await?;
    let Some(dim) = engine.embedding_dim() else {
        return Err(ApiError::invalid_param(
            "model",
            format!(
                "The model '{model_id}' generates text; it has no embeddings (serve an \
                 embedding model such as bitnet-embedding-0.6b)."
            ),
        ));
    };
    if let Some(d) = req.dimensions
        && d != dim
    {
        return Err(ApiError::invalid_param(
            "dimensions",
            format!("This model's embeddings have {dim} dimensions; got dimensions={d}."),
        ));
    }
    let interrupt = Interrupt::new().with_deadline(generation_deadline(&state, request_deadline));
    let _cancel = CancelOnDrop(interrupt.clone());
    let eng = engine.clone();
    let (inputs, result) = tokio::task::spawn_blocking(move || {
        let inputs: Vec<Vec<u32>> = match req.input {
            EmbeddingInput::Texts(texts) => texts.iter().map(|t| eng.embedding_input(t)).collect(),
            EmbeddingInput::Tokens(ids) => ids,
        };
        let result = eng.embed(&inputs, &interrupt);
        (inputs, result)
    })
    .await
    .map_err(|e| ApiError::internal(format!("embedding failed: {}", panic_message(e))))?;
    drop(admission);
    let vectors = result.map_err(|e| match (e.index, e.error) {
        (Some(i), EngineError::ContextOverflow { prompt, n_ctx, .. }) => ApiError::invalid_param(
            &format!("input[{i}]"),
            format!(
                "input[{i}] has {prompt} tokens; this model's maximum context length is {n_ctx}."
            ),
        )
        .with_code("context_length_exceeded"),
        (Some(i), error) => {
            ApiError::invalid_param(&format!("input[{i}]"), format!("input[{i}]: {error}."))
        }
        (None, EngineError::Interrupted(StopReason::Deadline)) => ApiError::unavailable(
            "The embeddings did not finish within the time limit; send fewer or shorter inputs.",
            1,
        ),
        (None, error) => ApiError::internal(format!("embedding failed: {error}")),
    })?;
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = match req.encoding_format {
                EncodingFormat::Float => json!(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": model_id,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response())
}
