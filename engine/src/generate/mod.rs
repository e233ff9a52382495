//! Text generation: sampling, stop conditions and streaming of UTF-8-safe pieces.

pub mod sampler;

pub use sampler::SamplingParams;

/// Token ids that end generation unless the caller overrides them: `<|end_of_text|>` and
/// `<|eot_id|>` (the chat turn terminator the model was trained with).
pub const DEFAULT_STOP_IDS: [u32; 2] = [128001, 128009];

/// Everything that controls one generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Upper bound on generated tokens (the stop token, when hit, is not counted or emitted).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when one of these ids is sampled.
    pub stop_ids: Vec<u32>,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop_strings: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop_ids: DEFAULT_STOP_IDS.to_vec(),
            stop_strings: Vec::new(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `max_tokens` reached.
    Length,
    /// A stop id or stop string was produced.
    Stop,
    /// The streaming callback asked to stop (e.g. the client disconnected).
    Cancelled,
}

/// A piece of streamed output: the text that became complete with this token (possibly empty
/// while a multi-byte character is still partial) and the token id.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub token_id: u32,
}

/// The result of one generation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateOutput {
    pub text: String,
    /// Generated ids (stop id excluded).
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub stop_reason: StopReason,
    /// Wall time of the prompt pass (prefill), milliseconds.
    pub prompt_ms: f64,
    /// Wall time of all decode steps, milliseconds.
    pub decode_ms: f64,
}
