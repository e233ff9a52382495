//! Log-probabilities in OpenAI's two shapes: chat's `logprobs.content[]` (token, logprob,
//! bytes, top_logprobs) and the legacy completions object (tokens, token_logprobs,
//! top_logprobs, text_offset).

use bitnet_engine::TokenLogprob;
use serde_json::{Map, Value, json};

use crate::engine::Engine;

/// A token as the shapes show it: its piece (control tokens by their name), lossily as
/// text, and its bytes.
fn token(engine: &dyn Engine, id: u32) -> (String, Vec<u8>) {
    let bytes = engine.piece(id).unwrap_or_default();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Chat's `content` array for these tokens.
pub fn chat_content(engine: &dyn Engine, lps: &[TokenLogprob]) -> Value {
    let item = |id: u32, logprob: f32| {
        let (text, bytes) = token(engine, id);
        json!({ "token": text, "logprob": logprob, "bytes": bytes })
    };
    Value::Array(
        lps.iter()
            .map(|lp| {
                let mut v = item(lp.token_id, lp.logprob);
                v["top_logprobs"] = lp.top.iter().map(|&(id, l)| item(id, l)).collect();
                v
            })
            .collect(),
    )
}

/// Characters of a token's text (control tokens have none): its bytes that begin a
/// UTF-8 character, so that a character split across tokens is counted once, in the token
/// where it begins.
fn chars_of(engine: &dyn Engine, id: u32) -> usize {
    if engine.is_control(id) {
        return 0;
    }
    engine
        .piece(id)
        .unwrap_or_default()
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
}

/// Characters of the text these tokens spell.
pub fn text_chars(engine: &dyn Engine, ids: &[u32]) -> usize {
    ids.iter().map(|&id| chars_of(engine, id)).sum()
}

/// The legacy completions object, built in pieces (a stream's chunks) with `text_offset`
/// running on: each token's position, in characters, in the text the response returns
/// (the prompt's text counts when it is not echoed).
pub struct Legacy {
    offset: usize,
}

impl Legacy {
    pub fn starting_at(offset: usize) -> Self {
        Self { offset }
    }

    /// The object for `tokens`: (id, its log-probability; `None` for a prompt's first
    /// token, which nothing predicts).
    pub fn shape(&mut self, engine: &dyn Engine, tokens: &[(u32, Option<&TokenLogprob>)]) -> Value {
        let mut texts = Vec::with_capacity(tokens.len());
        let mut lps = Vec::with_capacity(tokens.len());
        let mut tops = Vec::with_capacity(tokens.len());
        let mut offsets = Vec::with_capacity(tokens.len());
        for &(id, lp) in tokens {
            texts.push(Value::String(token(engine, id).0));
            offsets.push(json!(self.offset));
            self.offset += chars_of(engine, id);
            match lp {
                None => {
                    lps.push(Value::Null);
                    tops.push(Value::Null);
                }
                Some(lp) => {
                    lps.push(json!(lp.logprob));
                    let top: Map<String, Value> = lp
                        .top
                        .iter()
                        .map(|&(t, l)| (token(engine, t).0, json!(l)))
                        .collect();
                    tops.push(Value::Object(top));
                }
            }
        }
        json!({
            "tokens": texts,
            "token_logprobs": lps,
            "top_logprobs": tops,
            "text_offset": offsets,
        })
    }
}
