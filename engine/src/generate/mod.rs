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
/// while a multi-byte character is still partial, or held back while it may begin a stop
/// string) and the token id. When generation ends without a stop, a last piece may flush
/// held-back text; it repeats the last token id (count tokens from [`GenerateOutput`]).
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

use std::ops::ControlFlow;
use std::time::Instant;

use crate::tokenizer::StreamDecoder;
use crate::{EngineError, Model};
use sampler::Sampler;

/// Holds back text that could still turn into a stop string, and cuts at the first match.
struct StopMatcher<'a> {
    stops: &'a [String],
    /// Text produced but not yet emitted.
    held: String,
}

impl StopMatcher<'_> {
    /// Adds text; returns (text safe to emit, whether a stop string matched).
    fn push(&mut self, s: &str) -> (String, bool) {
        self.held.push_str(s);
        if let Some(cut) = self
            .stops
            .iter()
            .filter(|x| !x.is_empty())
            .filter_map(|x| self.held.find(x.as_str()))
            .min()
        {
            let out = self.held[..cut].to_owned();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a prefix of some stop string.
        let mut keep = 0;
        for st in self.stops {
            for (i, _) in st.char_indices().skip(1) {
                if self.held.ends_with(&st[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let emit_to = self.held.len() - keep;
        let out = self.held[..emit_to].to_owned();
        self.held.drain(..emit_to);
        (out, false)
    }
}

pub(crate) fn generate(
    model: &Model,
    prompt: &[u32],
    params: &GenerateParams,
    on_piece: &mut dyn FnMut(Piece<'_>) -> ControlFlow<()>,
) -> Result<GenerateOutput, EngineError> {
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let n_ctx = model.n_ctx();
    if prompt.len() + params.max_tokens > n_ctx {
        return Err(EngineError::ContextOverflow {
            prompt: prompt.len(),
            max_tokens: params.max_tokens,
            n_ctx,
        });
    }
    let mut session = model.new_session(prompt.len() + params.max_tokens);
    let mut logits = vec![0f32; model.n_vocab()];
    let t0 = Instant::now();
    model.forward_into(&mut session, prompt, &mut logits)?;
    let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

    let tok = model.tokenizer();
    let mut sampler = Sampler::new(params.sampling.clone());
    let mut history = prompt.to_vec();
    let mut decoder = StreamDecoder::new();
    let mut stops = StopMatcher {
        stops: &params.stop_strings,
        held: String::new(),
    };
    let mut text = String::new();
    let mut ids = Vec::new();
    let mut stop_reason = StopReason::Length;
    let t1 = Instant::now();
    while ids.len() < params.max_tokens {
        let id = sampler.sample(&mut logits, &history);
        if params.stop_ids.contains(&id) {
            stop_reason = StopReason::Stop;
            break;
        }
        ids.push(id);
        history.push(id);
        let (piece, hit) = stops.push(&decoder.push(tok, id));
        text.push_str(&piece);
        if on_piece(Piece {
            text: &piece,
            token_id: id,
        })
        .is_break()
        {
            stop_reason = StopReason::Cancelled;
            break;
        }
        if hit {
            stop_reason = StopReason::Stop;
            break;
        }
        if ids.len() == params.max_tokens {
            break;
        }
        model.forward_into(&mut session, &[id], &mut logits)?;
    }
    if stop_reason != StopReason::Stop {
        // Flush held-back text (a partial stop string that never completed, a cut character).
        let tail = decoder.finish();
        let (mut rest, _) = stops.push(&tail);
        rest.push_str(&stops.held);
        if !rest.is_empty() {
            text.push_str(&rest);
            let last = ids.last().copied().unwrap_or(0);
            let _ = on_piece(Piece {
                text: &rest,
                token_id: last,
            });
        }
    }
    Ok(GenerateOutput {
        text,
        completion_tokens: ids.len(),
        token_ids: ids,
        prompt_tokens: prompt.len(),
        stop_reason,
        prompt_ms,
        decode_ms: t1.elapsed().as_secs_f64() * 1e3,
    })
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    #[test]
    fn holds_back_possible_prefixes_and_cuts_at_the_first_stop() {
        let stops = vec!["END".to_owned(), "xyz".to_owned()];
        let mut m = StopMatcher {
            stops: &stops,
            held: String::new(),
        };
        assert_eq!(m.push("hello E"), ("hello ".to_owned(), false));
        assert_eq!(m.push("N"), (String::new(), false));
        assert_eq!(m.push("Dless"), (String::new(), true));
        let mut m = StopMatcher {
            stops: &stops,
            held: String::new(),
        };
        assert_eq!(m.push("ab EN"), ("ab ".to_owned(), false));
        assert_eq!(m.push("x"), ("EN".to_owned(), false));
        assert_eq!(m.held, "x");
    }
}
