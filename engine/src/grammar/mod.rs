//! Constrained decoding: a context-free grammar (llama.cpp's GBNF, or one compiled from a JSON
//! Schema) that every generated token must keep the output inside.
//!
//! - [`Grammar::parse`] reads GBNF and lowers it to flat rules over Unicode character
//!   classes (repetitions become helper rules), refusing what would make matching unbounded
//!   (left recursion, undefined rules, grammars over the size limits).
//! - [`json_schema::to_gbnf`] turns a JSON Schema into GBNF; `json_object` is its schema `{}`
//!   restricted to objects.
//! - [`Matcher`] follows one generation through the grammar (a set of parse stacks) and says
//!   which tokens may come next, walking a byte trie of the vocabulary ([`TokenTrie`]).

mod gbnf;
pub mod json_schema;
mod matcher;
mod trie;

pub use matcher::Matcher;
pub use trie::TokenTrie;

use std::fmt;

/// Most elements (characters and rule references, after lowering) a grammar may have: a
/// request's grammar is client input, and matching work grows with it.
pub const MAX_GRAMMAR_ELEMENTS: usize = 200_000;
/// Most repetitions one `{m,n}` may ask for (each is a copy or a helper rule).
pub const MAX_REPEAT: u32 = 10_000;

/// A grammar that cannot be used, with what is wrong in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

/// One position's content in a rule alternative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    /// One character of the class `classes[i]`.
    Chars(u32),
    /// The rule with this index.
    Ref(u32),
    /// The end of an alternative.
    End,
}

/// A set of Unicode scalar values: sorted, disjoint, inclusive ranges, and the ASCII part as
/// a bit set (the common case is one test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CharClass {
    ranges: Vec<(u32, u32)>,
    ascii: u128,
}

impl CharClass {
    fn new(mut ranges: Vec<(u32, u32)>, negated: bool) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        if negated {
            let mut inv = Vec::with_capacity(merged.len() + 1);
            let mut next = 0u32;
            for &(lo, hi) in &merged {
                if lo > next {
                    inv.push((next, lo - 1));
                }
                next = hi + 1;
            }
            if next <= 0x10FFFF {
                inv.push((next, 0x10FFFF));
            }
            merged = inv;
        }
        let mut ascii = 0u128;
        for &(lo, hi) in &merged {
            for c in lo..=hi.min(127) {
                ascii |= 1 << c;
            }
        }
        Self {
            ranges: merged,
            ascii,
        }
    }

    #[inline]
    pub(crate) fn contains(&self, c: u32) -> bool {
        if c < 128 {
            return self.ascii >> c & 1 == 1;
        }
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi)
    }

    /// Whether any value in `lo..=hi` is in the class.
    pub(crate) fn intersects(&self, lo: u32, hi: u32) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= hi && lo <= b)
    }
}

/// A grammar ready for matching: alternatives laid end to end in `elems`, each closed by
/// [`Elem::End`]; rule `r`'s alternatives start at `rules[r]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Grammar {
    pub(crate) elems: Vec<Elem>,
    pub(crate) classes: Vec<CharClass>,
    pub(crate) rules: Vec<Vec<u32>>,
    pub(crate) names: Vec<String>,
    pub(crate) root: u32,
}

impl fmt::Debug for Grammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grammar")
            .field("rules", &self.rules.len())
            .field("elements", &self.elems.len())
            .finish()
    }
}

impl Grammar {
    /// Reads GBNF (llama.cpp's grammar format) whose start rule is `root`.
    pub fn parse(text: &str) -> Result<Self, GrammarError> {
        let g = gbnf::parse(text)?;
        g.check()?;
        Ok(g)
    }

    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    pub fn json_object() -> Self {
        Self::parse(&json_schema::json_object_gbnf()).expect("the built-in JSON grammar parses")
    }

    /// A grammar for the values of a JSON Schema; see [`json_schema::to_gbnf`].
    pub fn from_json_schema(schema: &serde_json::Value) -> Result<Self, json_schema::SchemaError> {
        let text = json_schema::to_gbnf(schema)?;
        Self::parse(&text).map_err(|e| json_schema::SchemaError {
            keyword: String::new(),
            message: format!("the schema's grammar is unusable: {e}"),
        })
    }

    /// Refuses grammars that matching cannot follow in bounded work: a rule that can reach
    /// itself without reading a character (left recursion, or a repetition of something that
    /// can be empty).
    fn check(&self) -> Result<(), GrammarError> {
        let n = self.rules.len();
        // Which rules can match the empty string (a fixed point).
        let mut nullable = vec![false; n];
        loop {
            let mut changed = false;
            for r in 0..n {
                if nullable[r] {
                    continue;
                }
                let empty_alt = self.rules[r].iter().any(|&start| {
                    self.alt(start).iter().all(|e| match e {
                        Elem::Ref(x) => nullable[*x as usize],
                        _ => false,
                    })
                });
                if empty_alt {
                    nullable[r] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // Rule r reaches rule x at its left edge: a reference preceded only by nullable
        // references.
        let left: Vec<Vec<u32>> = (0..n)
            .map(|r| {
                let mut out = Vec::new();
                for &start in &self.rules[r] {
                    for e in self.alt(start) {
                        match e {
                            Elem::Ref(x) => {
                                out.push(*x);
                                if !nullable[*x as usize] {
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                }
                out
            })
            .collect();
        // A cycle in `left` is left recursion: depth-first search with colours.
        let mut colour = vec![0u8; n];
        for start in 0..n {
            if colour[start] != 0 {
                continue;
            }
            let mut stack = vec![(start, 0usize)];
            colour[start] = 1;
            while let Some(&mut (r, ref mut i)) = stack.last_mut() {
                if let Some(&x) = left[r].get(*i) {
                    *i += 1;
                    let x = x as usize;
                    match colour[x] {
                        0 => {
                            colour[x] = 1;
                            stack.push((x, 0));
                        }
                        1 => {
                            return Err(GrammarError(format!(
                                "rule '{}' can reach itself without reading a character \
                                 (left recursion, or a repetition of something that can be \
                                 empty)",
                                self.names[x]
                            )));
                        }
                        _ => {}
                    }
                } else {
                    colour[r] = 2;
                    stack.pop();
                }
            }
        }
        Ok(())
    }

    /// The elements of the alternative starting at `start`, without its end marker.
    fn alt(&self, start: u32) -> &[Elem] {
        let s = start as usize;
        let len = self.elems[s..]
            .iter()
            .position(|e| *e == Elem::End)
            .expect("every alternative ends");
        &self.elems[s..s + len]
    }
}

#[cfg(test)]
mod tests;
