//! Llama 3 byte-level BPE, built from GGUF metadata (`tokenizer.ggml.*`).
//!
//! Pieces come from the pre-tokenizer; with the Llama 3 rule a piece that is itself a token
//! is emitted whole ("ignore merges"), otherwise BPE merges its bytes by rank. Special
//! (CONTROL) tokens are only ever inserted by id: their text in user input stays plain text.

pub mod pretokenize;
mod stream;

use rustc_hash::FxHashMap;

pub use pretokenize::PreTokenizer;
pub use stream::StreamDecoder;

use crate::EngineError;
use crate::gguf::{GgufFile, Value};

/// llama.cpp's token types.
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// One chat message; `role` is `system`, `user` or `assistant` (any case).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// GPT-2's reversible byte <-> printable-char map used by byte-level BPE vocabularies.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    table
}

fn token_text_to_bytes(s: &str, char_to_byte: &FxHashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        match char_to_byte.get(&c) {
            Some(&b) => out.push(b),
            // Not a byte-level char: keep its UTF-8 (never the case in Llama 3's vocabulary).
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// The tokenizer's inputs, as stored in GGUF (`tokenizer.ggml.*`).
#[derive(Debug, Clone, Default)]
pub struct TokenizerParts {
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub bos: u32,
    pub eos: u32,
    pub eot: Option<u32>,
    pub add_bos: bool,
    pub pre: PreTokenizer,
}

pub struct Tokenizer {
    /// Raw bytes of every token (control tokens: their text).
    token_bytes: Vec<Vec<u8>>,
    is_control: Vec<bool>,
    /// Raw bytes -> id, for non-control tokens.
    vocab: FxHashMap<Vec<u8>, u32>,
    /// (left, right) -> (rank, merged id).
    merges: FxHashMap<(u32, u32), (u32, u32)>,
    byte_ids: [u32; 256],
    pub bos: u32,
    pub eos: u32,
    pub eot: u32,
    pub add_bos: bool,
    pub pre: PreTokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("tokens", &self.token_bytes.len())
            .field("merges", &self.merges.len())
            .finish()
    }
}

/// Id of `<|eot_id|>` in Llama 3 vocabularies (files often lack `eot_token_id`).
const LLAMA3_EOT: u32 = 128009;

impl Tokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, EngineError> {
        let invalid = |m: String| EngineError::InvalidModel(m);
        match g.get("tokenizer.ggml.model").and_then(Value::as_str) {
            Some("gpt2") => {}
            Some(other) => return Err(invalid(format!("tokenizer model {other:?} is not supported (expected gpt2)"))),
            None => return Err(invalid("missing key tokenizer.ggml.model".into())),
        }
        let strings = |key: &str| -> Result<Vec<String>, EngineError> {
            let items = g
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| invalid(format!("missing key {key}")))?;
            items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid(format!("{key} is not an array of strings")))
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let token_types = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            Some(items) => items
                .iter()
                .map(|v| match v {
                    Value::I32(t) => Some(*t),
                    other => other.as_u64().map(|t| t as i32),
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid("tokenizer.ggml.token_type is not an integer array".into()))?,
            None => vec![token_type::NORMAL; tokens.len()],
        };
        let id = |key: &str, default: u32| -> u32 {
            g.get(key).and_then(Value::as_u64).map_or(default, |v| v as u32)
        };
        let pre = match g.get("tokenizer.ggml.pre").and_then(Value::as_str) {
            // Absent in the official file: the model was trained with the Llama 3 rule.
            None | Some("llama-bpe" | "llama3" | "llama-v3") => PreTokenizer::Llama3,
            Some("default") => PreTokenizer::LlamaCppDefault,
            Some(other) => return Err(invalid(format!("pre-tokenizer {other:?} is not supported"))),
        };
        Self::from_parts(TokenizerParts {
            bos: id("tokenizer.ggml.bos_token_id", 128000),
            eos: id("tokenizer.ggml.eos_token_id", 128001),
            eot: g.get("tokenizer.ggml.eot_token_id").and_then(Value::as_u64).map(|v| v as u32),
            add_bos: g.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool).unwrap_or(true),
            tokens,
            token_types,
            merges,
            pre,
        })
    }

    pub fn from_parts(p: TokenizerParts) -> Result<Self, EngineError> {
        let invalid = |m: String| EngineError::InvalidModel(m);
        let n = p.tokens.len();
        if n == 0 || p.token_types.len() != n {
            return Err(invalid(format!("{n} tokens but {} token types", p.token_types.len())));
        }
        let b2c = byte_to_char_table();
        let c2b: FxHashMap<char, u8> = b2c.iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
        let mut token_bytes = Vec::with_capacity(n);
        let mut is_control = Vec::with_capacity(n);
        let mut vocab = FxHashMap::with_capacity_and_hasher(n, Default::default());
        for (i, (t, &ty)) in p.tokens.iter().zip(&p.token_types).enumerate() {
            let control = ty == token_type::CONTROL;
            let bytes = if control { t.as_bytes().to_vec() } else { token_text_to_bytes(t, &c2b) };
            if !control {
                vocab.entry(bytes.clone()).or_insert(i as u32);
            }
            token_bytes.push(bytes);
            is_control.push(control);
        }
        let mut byte_ids = [0u32; 256];
        for b in 0..256 {
            byte_ids[b] = *vocab
                .get(&[b as u8][..])
                .ok_or_else(|| invalid(format!("vocabulary lacks the byte token for {b:#04x}")))?;
        }
        let text_id: FxHashMap<&str, u32> = p
            .tokens
            .iter()
            .enumerate()
            .filter(|&(i, _)| !is_control[i])
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let mut merges = FxHashMap::with_capacity_and_hasher(p.merges.len(), Default::default());
        for (rank, m) in p.merges.iter().enumerate() {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| invalid(format!("merge #{rank} {m:?} has no space")))?;
            let look = |s: &str| text_id.get(s).copied();
            let (Some(ia), Some(ib)) = (look(a), look(b)) else {
                return Err(invalid(format!("merge #{rank} {m:?} names unknown tokens")));
            };
            let merged = [a, b].concat();
            let Some(im) = look(&merged) else {
                return Err(invalid(format!("merge #{rank} {m:?} makes the unknown token {merged:?}")));
            };
            merges.entry((ia, ib)).or_insert((rank as u32, im));
        }
        let check = |id: u32, what: &str| {
            if (id as usize) < n { Ok(id) } else { Err(invalid(format!("{what} id {id} is outside the vocabulary of {n}"))) }
        };
        let eot = match p.eot {
            Some(e) => check(e, "eot")?,
            None if (LLAMA3_EOT as usize) < n => LLAMA3_EOT,
            None => p.eos,
        };
        Ok(Self {
            bos: check(p.bos, "bos")?,
            eos: check(p.eos, "eos")?,
            eot,
            add_bos: p.add_bos,
            pre: p.pre,
            token_bytes,
            is_control,
            vocab,
            merges,
            byte_ids,
        })
    }

    pub fn n_tokens(&self) -> usize {
        self.token_bytes.len()
    }

    /// Encodes plain text (special-token text stays plain text), optionally with BOS first.
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            ids.push(self.bos);
        }
        self.encode_into(text, &mut ids);
        ids
    }

    /// Appends the ids of `text` to `ids`.
    pub fn encode_into(&self, text: &str, ids: &mut Vec<u32>) {
        let mut pieces = Vec::with_capacity(text.len() / 4 + 1);
        pretokenize::split(self.pre, text, &mut pieces);
        let mut work = Vec::new();
        for (a, b) in pieces {
            self.encode_piece(&text.as_bytes()[a..b], ids, &mut work);
        }
    }

    fn encode_piece(&self, piece: &[u8], ids: &mut Vec<u32>, sym: &mut Vec<u32>) {
        if self.pre == PreTokenizer::Llama3
            && let Some(&id) = self.vocab.get(piece)
        {
            ids.push(id);
            return;
        }
        sym.clear();
        sym.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
        // Merge the lowest-ranked adjacent pair (leftmost on ties) until none applies.
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..sym.len().saturating_sub(1) {
                if let Some(&(rank, id)) = self.merges.get(&(sym[i], sym[i + 1]))
                    && best.is_none_or(|(r, _, _)| rank < r)
                {
                    best = Some((rank, i, id));
                }
            }
            let Some((_, i, id)) = best else { break };
            sym[i] = id;
            sym.remove(i + 1);
        }
        ids.extend_from_slice(sym);
    }

    /// BOS, then `Role: content<|eot_id|>` per message (header and content tokenized
    /// separately), then `Assistant: `. Content is never parsed for special tokens.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Vec<u32> {
        let mut ids = vec![self.bos];
        for m in messages {
            self.encode_into(&format!("{}: ", role_title(&m.role)), &mut ids);
            self.encode_into(&m.content, &mut ids);
            ids.push(self.eot);
        }
        self.encode_into("Assistant: ", &mut ids);
        ids
    }

    /// Raw bytes of one token; control tokens give nothing (they are not text).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        match self.token_bytes.get(id as usize) {
            Some(b) if !self.is_control[id as usize] => b,
            _ => &[],
        }
    }

    /// The text of a token, control tokens included (for display).
    pub fn token_text(&self, id: u32) -> String {
        self.token_bytes
            .get(id as usize)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.is_control.get(id as usize).copied().unwrap_or(false)
    }

    /// Text of `ids` (control tokens skipped; invalid UTF-8 replaced by U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id).iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn role_title(role: &str) -> String {
    let mut c = role.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}
