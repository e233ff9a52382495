//! Llama 3 byte-level BPE, built from GGUF metadata (`tokenizer.ggml.*`).
//!
//! Pieces come from the pre-tokenizer; with the Llama 3 rule a piece that is itself a token
//! is emitted whole ("ignore merges"), otherwise BPE merges its bytes by rank. Special
//! (CONTROL) tokens are only ever inserted by id: their text in user input stays plain text.

pub mod pretokenize;
mod stream;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{Hash, Hasher};

use hashbrown::HashTable;
use rustc_hash::{FxHashMap, FxHasher};

pub use pretokenize::PreTokenizer;
pub use stream::StreamDecoder;

use crate::EngineError;
use crate::gguf::{GgufFile, StringArray, Value};

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

/// GPT-2's reversible byte <-> printable-char map used by byte-level BPE vocabularies:
/// printable bytes map to themselves, the others to U+0100 and up, in byte order. Returns
/// the inverse, indexed by code point (every mapped char is below U+0144).
fn char_to_byte_table() -> [u16; 324] {
    let mut table = [u16::MAX; 324];
    let mut n = 0usize;
    for b in 0..256usize {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        table[c] = b as u16;
    }
    table
}

/// Appends the raw bytes of a byte-level token text.
fn push_token_bytes(s: &str, c2b: &[u16; 324], out: &mut Vec<u8>) {
    for c in s.chars() {
        match c2b.get(c as usize) {
            Some(&b) if b != u16::MAX => out.push(b as u8),
            // Not a byte-level char: keep its UTF-8 (never the case in Llama 3's vocabulary).
            _ => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
}

/// The tokenizer's inputs, as stored in GGUF (`tokenizer.ggml.*`).
#[derive(Debug, Clone, Default)]
pub struct TokenizerParts {
    pub tokens: StringArray,
    pub token_types: Vec<i32>,
    pub merges: StringArray,
    pub bos: u32,
    pub eos: u32,
    pub eot: Option<u32>,
    pub add_bos: bool,
    pub pre: PreTokenizer,
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    b.hash(&mut h);
    h.finish()
}

/// Token bytes in one arena, plus a hash table from bytes to id over it (no per-token
/// allocation: building this for 128k tokens is on every cold start's path).
struct Vocab {
    arena: Vec<u8>,
    /// `ends[i]` = end of token i in `arena`.
    ends: Vec<u32>,
    /// Ids of the non-control tokens, hashed by their bytes.
    table: HashTable<u32>,
}

impl Vocab {
    fn bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.arena[start..self.ends[i] as usize]
    }

    fn get(&self, b: &[u8]) -> Option<u32> {
        self.table
            .find(hash_bytes(b), |&id| self.bytes(id) == b)
            .copied()
    }
}

/// A symbol merged into its left neighbour.
const DEAD: u32 = u32::MAX;
/// No left neighbour.
const NONE: u32 = u32::MAX;

/// Buffers of [`Tokenizer::encode_piece`], reused across the pieces of one text.
#[derive(Default)]
struct BpeWork {
    sym: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
}

pub struct Tokenizer {
    vocab: Vocab,
    is_control: Vec<bool>,
    /// (left << 32 | right) -> (rank << 32 | merged id).
    merges: FxHashMap<u64, u64>,
    byte_ids: [u32; 256],
    pub bos: u32,
    pub eos: u32,
    pub eot: u32,
    pub add_bos: bool,
    pub pre: PreTokenizer,
    /// The vocabulary by bytes, built on first use (constrained decoding).
    trie: std::sync::OnceLock<crate::grammar::TokenTrie>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("tokens", &self.is_control.len())
            .field("merges", &self.merges.len())
            .finish()
    }
}

struct SpecialIds {
    bos: u32,
    eos: u32,
    eot: Option<u32>,
    add_bos: bool,
    pre: PreTokenizer,
}

/// The tokenizer arrays and special ids of a GGUF file, borrowed from it.
#[allow(clippy::type_complexity)]
fn gguf_parts(
    g: &GgufFile,
) -> Result<
    (
        &StringArray,
        std::borrow::Cow<'_, [i32]>,
        &StringArray,
        SpecialIds,
    ),
    EngineError,
> {
    let invalid = |m: String| EngineError::InvalidModel(m);
    match g.get("tokenizer.ggml.model").and_then(Value::as_str) {
        Some("gpt2") => {}
        Some(other) => {
            return Err(invalid(format!(
                "tokenizer model {other:?} is not supported (expected gpt2)"
            )));
        }
        None => return Err(invalid("missing key tokenizer.ggml.model".into())),
    }
    static EMPTY: std::sync::LazyLock<StringArray> = std::sync::LazyLock::new(Default::default);
    let strings = |key: &str| -> Result<&StringArray, EngineError> {
        match g.get(key) {
            Some(Value::Strings(a)) => Ok(a),
            Some(Value::Array { items, .. }) if items.is_empty() => Ok(&*EMPTY),
            Some(_) => Err(invalid(format!("{key} is not an array of strings"))),
            None => Err(invalid(format!("missing key {key}"))),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let token_types = match g.get("tokenizer.ggml.token_type") {
        Some(Value::I32s(a)) => std::borrow::Cow::Borrowed(a.as_slice()),
        Some(Value::Array { items, .. }) => items
            .iter()
            .map(|v| match v {
                Value::I32(t) => Some(*t),
                other => other.as_u64().map(|t| t as i32),
            })
            .collect::<Option<Vec<_>>>()
            .map(std::borrow::Cow::Owned)
            .ok_or_else(|| invalid("tokenizer.ggml.token_type is not an integer array".into()))?,
        Some(_) => {
            return Err(invalid(
                "tokenizer.ggml.token_type is not an integer array".into(),
            ));
        }
        None => std::borrow::Cow::Owned(vec![token_type::NORMAL; tokens.len()]),
    };
    let id = |key: &str, default: u32| -> u32 {
        g.get(key)
            .and_then(Value::as_u64)
            .map_or(default, |v| v as u32)
    };
    let pre = match g.get("tokenizer.ggml.pre").and_then(Value::as_str) {
        // Absent in the official file: the model was trained with the Llama 3 rule.
        None | Some("llama-bpe" | "llama3" | "llama-v3") => PreTokenizer::Llama3,
        Some("default") => PreTokenizer::LlamaCppDefault,
        Some("qwen2") => PreTokenizer::Qwen2,
        Some(other) => {
            return Err(invalid(format!("pre-tokenizer {other:?} is not supported")));
        }
    };
    let ids = SpecialIds {
        bos: id("tokenizer.ggml.bos_token_id", 128000),
        eos: id("tokenizer.ggml.eos_token_id", 128001),
        eot: g
            .get("tokenizer.ggml.eot_token_id")
            .and_then(Value::as_u64)
            .map(|v| v as u32),
        // Llama 3 starts with BOS; Qwen2/Qwen3 vocabularies have none of their own (their
        // BOS id is <|endoftext|>) and their models are not trained with one.
        add_bos: g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(pre != PreTokenizer::Qwen2),
        pre,
    };
    Ok((tokens, token_types, merges, ids))
}

impl TokenizerParts {
    /// The tokenizer's inputs as a GGUF file holds them (a model, or llama.cpp's
    /// vocabulary-only files), copied out.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, EngineError> {
        let (tokens, token_types, merges, ids) = gguf_parts(g)?;
        Ok(Self {
            tokens: tokens.clone(),
            token_types: token_types.into_owned(),
            merges: merges.clone(),
            bos: ids.bos,
            eos: ids.eos,
            eot: ids.eot,
            add_bos: ids.add_bos,
            pre: ids.pre,
        })
    }
}

/// Id of `<|eot_id|>` in Llama 3 vocabularies (files often lack `eot_token_id`).
const LLAMA3_EOT: u32 = 128009;

impl Tokenizer {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, EngineError> {
        let (tokens, token_types, merges, ids) = gguf_parts(g)?;
        Self::build(tokens, &token_types, merges, ids)
    }

    pub fn from_parts(p: TokenizerParts) -> Result<Self, EngineError> {
        let ids = SpecialIds {
            bos: p.bos,
            eos: p.eos,
            eot: p.eot,
            add_bos: p.add_bos,
            pre: p.pre,
        };
        Self::build(&p.tokens, &p.token_types, &p.merges, ids)
    }

    fn build(
        tokens: &StringArray,
        token_types: &[i32],
        merges_in: &StringArray,
        p: SpecialIds,
    ) -> Result<Self, EngineError> {
        let invalid = |m: String| EngineError::InvalidModel(m);
        let n = tokens.len();
        if n == 0 || token_types.len() != n || n >= u32::MAX as usize {
            return Err(invalid(format!(
                "{n} tokens but {} token types",
                token_types.len()
            )));
        }
        let c2b = char_to_byte_table();
        let mut arena = Vec::with_capacity(tokens.total_bytes());
        let mut ends = Vec::with_capacity(n);
        let mut is_control = Vec::with_capacity(n);
        for (t, &ty) in tokens.iter().zip(token_types) {
            let control = ty == token_type::CONTROL;
            if control {
                arena.extend_from_slice(t.as_bytes());
            } else {
                push_token_bytes(t, &c2b, &mut arena);
            }
            let end = u32::try_from(arena.len())
                .map_err(|_| invalid("vocabulary text exceeds 4 GiB".into()))?;
            ends.push(end);
            is_control.push(control);
        }
        let mut vocab = Vocab {
            arena,
            ends,
            table: HashTable::with_capacity(n),
        };
        for id in 0..n as u32 {
            if is_control[id as usize] {
                continue;
            }
            let h = hash_bytes(vocab.bytes(id));
            // The first id wins for duplicate texts.
            if vocab
                .table
                .find(h, |&o| vocab.bytes(o) == vocab.bytes(id))
                .is_none()
            {
                let Vocab { table, arena, ends } = &mut vocab;
                let bytes_of = |i: u32| {
                    let i = i as usize;
                    &arena[if i == 0 { 0 } else { ends[i - 1] as usize }..ends[i] as usize]
                };
                table.insert_unique(h, id, |&o| hash_bytes(bytes_of(o)));
            }
        }
        let mut byte_ids = [0u32; 256];
        for b in 0..256 {
            byte_ids[b] = vocab
                .get(&[b as u8])
                .ok_or_else(|| invalid(format!("vocabulary lacks the byte token for {b:#04x}")))?;
        }
        // Resolving 280k merges is three hash lookups each, bound by memory latency: split
        // it across threads (cold start path), then insert in rank order.
        let resolve = |range: std::ops::Range<usize>| -> Result<Vec<(u64, u64)>, EngineError> {
            let mut out = Vec::with_capacity(range.len());
            let (mut left, mut right) = (Vec::new(), Vec::new());
            for rank in range {
                let m = merges_in.get(rank).unwrap_or_default();
                let (a, b) = m
                    .split_once(' ')
                    .ok_or_else(|| invalid(format!("merge #{rank} {m:?} has no space")))?;
                left.clear();
                push_token_bytes(a, &c2b, &mut left);
                let split = left.len();
                push_token_bytes(b, &c2b, &mut left);
                right.clear();
                right.extend_from_slice(&left[split..]);
                let (Some(ia), Some(ib)) = (vocab.get(&left[..split]), vocab.get(&right)) else {
                    return Err(invalid(format!("merge #{rank} {m:?} names unknown tokens")));
                };
                let Some(im) = vocab.get(&left) else {
                    return Err(invalid(format!(
                        "merge #{rank} {m:?} makes a token that is not in the vocabulary"
                    )));
                };
                out.push((
                    (ia as u64) << 32 | ib as u64,
                    (rank as u64) << 32 | im as u64,
                ));
            }
            Ok(out)
        };
        let nm = merges_in.len();
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8);
        let per = nm.div_ceil(workers).max(1);
        let parts: Vec<Result<Vec<(u64, u64)>, EngineError>> = if workers > 1 && nm > 10_000 {
            std::thread::scope(|sc| {
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        let r = (w * per).min(nm)..((w + 1) * per).min(nm);
                        sc.spawn(move || resolve(r))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(invalid("merge resolution panicked".into())))
                    })
                    .collect()
            })
        } else {
            vec![resolve(0..nm)]
        };
        let mut merges = FxHashMap::with_capacity_and_hasher(nm, Default::default());
        for part in parts {
            for (k, v) in part? {
                merges.entry(k).or_insert(v);
            }
        }
        let check = |id: u32, what: &str| {
            if (id as usize) < n {
                Ok(id)
            } else {
                Err(invalid(format!(
                    "{what} id {id} is outside the vocabulary of {n}"
                )))
            }
        };
        let eot = match p.eot {
            Some(e) => check(e, "eot")?,
            None if p.pre != PreTokenizer::Qwen2 && (LLAMA3_EOT as usize) < n => LLAMA3_EOT,
            None => p.eos,
        };
        Ok(Self {
            bos: check(p.bos, "bos")?,
            eos: check(p.eos, "eos")?,
            eot,
            add_bos: p.add_bos,
            pre: p.pre,
            vocab,
            is_control,
            merges,
            byte_ids,
            trie: std::sync::OnceLock::new(),
        })
    }

    pub fn n_tokens(&self) -> usize {
        self.is_control.len()
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
        let mut work = BpeWork::default();
        for (a, b) in pieces {
            self.encode_piece(&text.as_bytes()[a..b], ids, &mut work);
        }
    }

    /// The merge of the adjacent pair `(left, right)`: (rank, merged id).
    fn merge_of(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.merges
            .get(&((left as u64) << 32 | right as u64))
            .map(|&packed| ((packed >> 32) as u32, packed as u32))
    }

    /// Byte-level BPE of one piece: merges the lowest-ranked adjacent pair, leftmost on ties,
    /// until none applies. Candidate pairs wait in a min-heap keyed by (rank, position of the
    /// left symbol); symbols form a linked list over the piece's byte positions (a merged
    /// symbol keeps its left part's position, so "leftmost" is the smallest position). A
    /// popped candidate whose two symbols have changed since it was pushed is stale and
    /// skipped. O(n log n) in the piece's length: a piece has no length bound (a prompt can
    /// be one run of a million letters), and the plain rescan-per-merge loop was quadratic.
    fn encode_piece(&self, piece: &[u8], ids: &mut Vec<u32>, work: &mut BpeWork) {
        if self.pre == PreTokenizer::Llama3
            && let Some(id) = self.vocab.get(piece)
        {
            ids.push(id);
            return;
        }
        let n = piece.len();
        let BpeWork {
            sym,
            next,
            prev,
            heap,
        } = work;
        sym.clear();
        sym.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
        // `next[i] == n` / `prev[i] == NONE`: no neighbour; `sym[i] == DEAD`: merged away.
        next.clear();
        next.extend(1..=n as u32);
        prev.clear();
        prev.extend((0..n as u32).map(|i| i.wrapping_sub(1)));
        heap.clear();
        let push = |heap: &mut BinaryHeap<Reverse<(u32, u32)>>, i: usize, l: u32, r: u32| {
            if let Some((rank, _)) = self.merge_of(l, r) {
                heap.push(Reverse((rank, i as u32)));
            }
        };
        for i in 0..n.saturating_sub(1) {
            push(heap, i, sym[i], sym[i + 1]);
        }
        while let Some(Reverse((rank, i))) = heap.pop() {
            let i = i as usize;
            let j = next[i] as usize;
            if sym[i] == DEAD || j >= n {
                continue;
            }
            // Still the pair that was pushed? Its rank says so: ranks are unique per pair.
            let Some((now, merged)) = self.merge_of(sym[i], sym[j]) else {
                continue;
            };
            if now != rank {
                continue;
            }
            sym[i] = merged;
            sym[j] = DEAD;
            let k = next[j] as usize;
            next[i] = k as u32;
            if k < n {
                prev[k] = i as u32;
                push(heap, i, merged, sym[k]);
            }
            let p = prev[i];
            if p != NONE {
                push(heap, p as usize, sym[p as usize], merged);
            }
        }
        ids.extend(sym.iter().copied().filter(|&s| s != DEAD));
    }

    /// BOS, then `Role: content<|eot_id|>` per message (header and content tokenized
    /// separately), then `Assistant: `. Content is never parsed for special tokens.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Vec<u32> {
        let mut ids = vec![self.bos];
        self.append_chat(&mut ids, messages);
        ids
    }

    /// Continues a conversation's ids with `messages`, then `Assistant: `, exactly as
    /// [`encode_chat`](Self::encode_chat) lays them out. `ids` holds BOS and the earlier
    /// turns, each closed by `eot`: after a generated answer, push its ids and `eot` first
    /// (`bitnet chat` keeps the answer's own ids so that the next turn starts from its cache).
    pub fn append_chat(&self, ids: &mut Vec<u32>, messages: &[ChatMessage]) {
        for m in messages {
            self.encode_into(&format!("{}: ", role_title(&m.role)), ids);
            self.encode_into(&m.content, ids);
            ids.push(self.eot);
        }
        self.encode_into("Assistant: ", ids);
    }

    /// Raw bytes of one token; control tokens give nothing (they are not text).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        match self.is_control.get(id as usize) {
            Some(false) => self.vocab.bytes(id),
            _ => &[],
        }
    }

    /// Raw bytes of one token, control tokens included (their text, e.g. `<|eot_id|>`);
    /// `None` outside the vocabulary.
    pub fn piece(&self, id: u32) -> Option<&[u8]> {
        ((id as usize) < self.n_tokens()).then(|| self.vocab.bytes(id))
    }

    /// The text of a token, control tokens included (for display).
    pub fn token_text(&self, id: u32) -> String {
        if (id as usize) < self.n_tokens() {
            String::from_utf8_lossy(self.vocab.bytes(id)).into_owned()
        } else {
            String::new()
        }
    }

    /// The text tokens by bytes, built on first use (~100 ms and ~10 MB for 128k tokens).
    pub fn token_trie(&self) -> &crate::grammar::TokenTrie {
        self.trie.get_or_init(|| {
            let started = std::time::Instant::now();
            let trie = crate::grammar::TokenTrie::new(self);
            tracing::info!(
                ms = started.elapsed().as_secs_f64() * 1e3,
                bytes = trie.bytes(),
                "vocabulary trie built (constrained decoding)"
            );
            trie
        })
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.is_control.get(id as usize).copied().unwrap_or(false)
    }

    /// Text of `ids` (control tokens skipped; invalid UTF-8 replaced by U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn role_title(role: &str) -> String {
    let mut c = role.chars();
    match c.next() {
        Some(f) => f
            .to_uppercase()
            .chain(c.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

#[cfg(all(test, feature = "bundled-tokenizer"))]
mod tests {
    use super::*;
    use crate::generate::sampler::Rng;

    impl Tokenizer {
        /// The plain specification of BPE (the engine's algorithm before the heap): rescan
        /// every adjacent pair, merge the lowest rank (leftmost on ties), repeat.
        fn encode_piece_rescan(&self, piece: &[u8]) -> Vec<u32> {
            if self.pre == PreTokenizer::Llama3
                && let Some(id) = self.vocab.get(piece)
            {
                return vec![id];
            }
            let mut sym: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
            loop {
                let best = (0..sym.len().saturating_sub(1))
                    .filter_map(|i| self.merge_of(sym[i], sym[i + 1]).map(|(r, id)| (r, i, id)))
                    .min_by_key(|&(r, i, _)| (r, i));
                let Some((_, i, id)) = best else { break };
                sym[i] = id;
                sym.remove(i + 1);
            }
            sym
        }
    }

    fn tokenizer(pre: PreTokenizer) -> Tokenizer {
        let mut parts = crate::fixture::llama3_tokenizer_parts().expect("shipped tokenizer");
        parts.pre = pre;
        Tokenizer::from_parts(parts).expect("tokenizer")
    }

    /// Random text from a small alphabet (long runs, repeated pairs, the merges' tie cases)
    /// and from every class the pre-tokenizer splits on.
    fn random_text(rng: &mut Rng, len: usize) -> String {
        const ALPHABETS: [&str; 5] = [
            "ab",
            "aaab ",
            "the quick brown fox, 12345!?",
            "ééàç中文😀\n\t ",
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:'\"()-_",
        ];
        let chars: Vec<char> = ALPHABETS[rng.next_u64() as usize % ALPHABETS.len()]
            .chars()
            .collect();
        (0..len)
            .map(|_| chars[rng.next_u64() as usize % chars.len()])
            .collect()
    }

    #[test]
    fn heap_bpe_gives_the_ids_of_the_rescanning_bpe() {
        for pre in [PreTokenizer::Llama3, PreTokenizer::LlamaCppDefault] {
            let tok = tokenizer(pre);
            let mut rng = Rng::new(0x5eed);
            let mut work = BpeWork::default();
            for case in 0..400 {
                let len = 1 + rng.next_u64() as usize % if case % 10 == 0 { 600 } else { 40 };
                let text = random_text(&mut rng, len);
                let mut pieces = Vec::new();
                pretokenize::split(pre, &text, &mut pieces);
                // Whole text as one piece too: the longest inputs the merge loop can see.
                pieces.push((0, text.len()));
                for (a, b) in pieces {
                    let piece = &text.as_bytes()[a..b];
                    let mut got = Vec::new();
                    tok.encode_piece(piece, &mut got, &mut work);
                    assert_eq!(got, tok.encode_piece_rescan(piece), "{pre:?} {piece:?}");
                }
            }
        }
    }
}
