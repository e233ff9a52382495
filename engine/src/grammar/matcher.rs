//! Following a generation through a [`Grammar`]: the set of parse stacks that the text so far
//! leaves open, advanced a character at a time, and the tokens that may come next.
//!
//! A stack is a list of grammar positions: the top is the character class to match next,
//! the ones below are where to continue when the rules above end. Stacks are hash-consed
//! (a node is a position and the node below it), so a stack is one `u32`, sets of stacks
//! compare and deduplicate as integers, and the expansion of "continue at position p above
//! stack s" into stacks with a character class on top is computed once and remembered.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::trie::TokenTrie;
use super::{Elem, Grammar};

/// The empty stack: the grammar has matched completely.
const ACCEPT: u32 = u32::MAX;
/// Below the bottom of a stack.
const BOTTOM: u32 = u32::MAX;
/// Most stacks one state may hold: an ambiguous grammar could otherwise grow them with
/// every character (a JSON grammar holds one to three). Past it the extra stacks are dropped:
/// the output still matches the grammar, some continuations are no longer offered.
const MAX_STACKS: usize = 256;
/// Most distinct stack nodes one generation may create (each ~40 bytes with its index
/// entry and expansion); past it the matcher is exhausted.
const MAX_NODES: usize = 1 << 20;
/// Most units of work (stacks stepped, gathered or expanded) one vocabulary walk may take:
/// a full walk of a 128k vocabulary inside a JSON string takes ~1.5M (9 ms); the limit is
/// ~100 ms of work. Past it the matcher is exhausted.
const MAX_WALK_STEPS: u64 = 16 << 20;

/// The character being decoded when a token ends inside one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Utf8 {
    value: u32,
    /// Continuation bytes still to come (0: none pending).
    need: u8,
    /// The character's total length in bytes.
    len: u8,
}

enum Decoded {
    Char(u32),
    Partial(Utf8),
    Invalid,
}

impl Utf8 {
    fn push(self, b: u8) -> Decoded {
        if self.need == 0 {
            return match b {
                0x00..=0x7F => Decoded::Char(b as u32),
                0xC2..=0xDF => Decoded::Partial(Utf8 {
                    value: (b & 0x1F) as u32,
                    need: 1,
                    len: 2,
                }),
                0xE0..=0xEF => Decoded::Partial(Utf8 {
                    value: (b & 0x0F) as u32,
                    need: 2,
                    len: 3,
                }),
                0xF0..=0xF4 => Decoded::Partial(Utf8 {
                    value: (b & 0x07) as u32,
                    need: 3,
                    len: 4,
                }),
                _ => Decoded::Invalid,
            };
        }
        if b & 0xC0 != 0x80 {
            return Decoded::Invalid;
        }
        let next = Utf8 {
            value: self.value << 6 | (b & 0x3F) as u32,
            need: self.need - 1,
            len: self.len,
        };
        let (lo, hi) = next.range();
        // No character this could become is valid: overlong, a surrogate, past U+10FFFF.
        if lo > hi || (lo >= 0xD800 && hi <= 0xDFFF) {
            return Decoded::Invalid;
        }
        if next.need == 0 {
            Decoded::Char(next.value)
        } else {
            Decoded::Partial(next)
        }
    }

    /// The characters this partial one can still become (empty, `lo > hi`, when none).
    fn range(&self) -> (u32, u32) {
        let shift = 6 * self.need as u32;
        let lo = self.value << shift;
        let hi = lo | ((1u32 << shift) - 1);
        // Shorter forms of the same value are overlong, hence not characters.
        let min = match self.len {
            2 => 0x80,
            3 => 0x800,
            _ => 0x10000,
        };
        (lo.max(min), hi.min(0x10FFFF))
    }
}

/// Stacks and their expansions, for one grammar.
#[derive(Debug, Clone)]
struct Stacks {
    g: Arc<Grammar>,
    /// (position, node below).
    nodes: Vec<(u32, u32)>,
    index: FxHashMap<(u32, u32), u32>,
    /// (position, node below) -> its expansion, a range of `lists`.
    memo: FxHashMap<(u32, u32), (u32, u32)>,
    lists: Vec<u32>,
    /// Stack steps taken (the walk's budget counts these).
    steps: u64,
}

impl Stacks {
    fn intern(&mut self, pos: u32, below: u32) -> u32 {
        if let Some(&id) = self.index.get(&(pos, below)) {
            return id;
        }
        let id = self.nodes.len() as u32;
        self.nodes.push((pos, below));
        self.index.insert((pos, below), id);
        id
    }

    /// The stacks with a character class (or nothing) on top that "continue at `pos`, then
    /// return to `below`" stands for. Terminates because the grammar has no left recursion.
    fn expand(&mut self, pos: u32, below: u32) -> (u32, u32) {
        if let Some(&r) = self.memo.get(&(pos, below)) {
            return r;
        }
        let mut out = Vec::new();
        match self.g.elems[pos as usize] {
            Elem::Chars(_) => out.push(self.intern(pos, below)),
            Elem::End if below == BOTTOM => out.push(ACCEPT),
            Elem::End => {
                let (p, b) = self.nodes[below as usize];
                let (s, n) = self.expand(p, b);
                out.extend_from_slice(&self.lists[s as usize..(s + n) as usize]);
            }
            Elem::Ref(r) => {
                let ret = self.intern(pos + 1, below);
                let g = self.g.clone();
                for &alt in &g.rules[r as usize] {
                    let (s, n) = self.expand(alt, ret);
                    out.extend_from_slice(&self.lists[s as usize..(s + n) as usize]);
                }
            }
        }
        self.steps += out.len() as u64 + 1;
        out.sort_unstable();
        out.dedup();
        let r = (self.lists.len() as u32, out.len() as u32);
        self.lists.extend_from_slice(&out);
        self.memo.insert((pos, below), r);
        r
    }

    fn class_of(&self, stack: u32) -> &super::CharClass {
        let (pos, _) = self.nodes[stack as usize];
        match self.g.elems[pos as usize] {
            Elem::Chars(c) => &self.g.classes[c as usize],
            _ => unreachable!("stacks are expanded until a class is on top"),
        }
    }

    /// The stacks after reading character `c` from `from`.
    fn step(&mut self, from: &[u32], c: u32, to: &mut Vec<u32>) {
        self.steps += from.len() as u64;
        to.clear();
        for &s in from {
            if s != ACCEPT && self.class_of(s).contains(c) {
                let (pos, below) = self.nodes[s as usize];
                let (st, n) = self.expand(pos + 1, below);
                to.extend_from_slice(&self.lists[st as usize..(st + n) as usize]);
            }
        }
        // Work counts what was gathered, duplicates included (sorting them is the cost).
        self.steps += to.len() as u64;
        if to.len() > 1 {
            to.sort_unstable();
            to.dedup();
            to.truncate(MAX_STACKS);
        }
    }

    /// Whether some stack in `from` takes a character in `lo..=hi`.
    fn takes_any(&self, from: &[u32], lo: u32, hi: u32) -> bool {
        from.iter()
            .any(|&s| s != ACCEPT && self.class_of(s).intersects(lo, hi))
    }

    /// `(to, to_utf8)` after reading byte `b` from `(from, utf8)`; false when the byte
    /// leaves no way to continue.
    fn step_byte(
        &mut self,
        from: &[u32],
        utf8: Utf8,
        b: u8,
        to: &mut Vec<u32>,
        to_utf8: &mut Utf8,
    ) -> bool {
        match utf8.push(b) {
            Decoded::Char(c) => {
                self.step(from, c, to);
                *to_utf8 = Utf8::default();
                !to.is_empty()
            }
            Decoded::Partial(u) => {
                let (lo, hi) = u.range();
                if !self.takes_any(from, lo, hi) {
                    return false;
                }
                to.clear();
                to.extend_from_slice(from);
                *to_utf8 = u;
                true
            }
            Decoded::Invalid => false,
        }
    }
}

/// One generation's place in a grammar. Clones follow independently (a request's choices).
#[derive(Debug, Clone)]
pub struct Matcher {
    stacks: Stacks,
    state: Vec<u32>,
    utf8: Utf8,
    /// Scratch per trie depth: the stacks and partial character after that many bytes.
    scratch: Vec<(Vec<u32>, Utf8)>,
    /// A limit on the work of following the grammar was reached (a grammar ambiguous
    /// enough to need more): nothing more is allowed.
    exhausted: bool,
}

impl Matcher {
    pub fn new(grammar: Arc<Grammar>) -> Self {
        let root = grammar.root as usize;
        let mut stacks = Stacks {
            g: grammar,
            nodes: Vec::new(),
            index: FxHashMap::default(),
            memo: FxHashMap::default(),
            lists: Vec::new(),
            steps: 0,
        };
        let mut state = Vec::new();
        let g = stacks.g.clone();
        for &alt in &g.rules[root] {
            let (s, n) = stacks.expand(alt, BOTTOM);
            state.extend_from_slice(&stacks.lists[s as usize..(s + n) as usize]);
        }
        state.sort_unstable();
        state.dedup();
        Self {
            stacks,
            state,
            utf8: Utf8::default(),
            scratch: Vec::new(),
            exhausted: false,
        }
    }

    /// Whether a limit on the work of following the grammar was reached; from then on no
    /// token is allowed. A grammar this ambiguous is refused in effect at run time.
    pub fn is_exhausted(&self) -> bool {
        self.exhausted
    }

    fn check_limits(&mut self) {
        if self.stacks.nodes.len() > MAX_NODES {
            self.exhausted = true;
        }
    }

    /// Whether the text so far is a complete match (generation may end here).
    pub fn is_complete(&self) -> bool {
        self.utf8.need == 0 && self.state.contains(&ACCEPT)
    }

    /// Whether any more text can follow.
    pub fn can_continue(&self) -> bool {
        self.state.iter().any(|&s| s != ACCEPT)
    }

    /// Reads `bytes` if the grammar allows them here; returns whether it did (when not, the
    /// state is unchanged).
    pub fn advance(&mut self, bytes: &[u8]) -> bool {
        if self.exhausted {
            return false;
        }
        let mut cur = self.state.clone();
        let mut utf8 = self.utf8;
        let mut next = Vec::new();
        for &b in bytes {
            let mut u = Utf8::default();
            if !self.stacks.step_byte(&cur, utf8, b, &mut next, &mut u) {
                return false;
            }
            std::mem::swap(&mut cur, &mut next);
            utf8 = u;
        }
        self.state = cur;
        self.utf8 = utf8;
        self.check_limits();
        true
    }

    /// Whether the grammar allows `bytes` here, without reading them.
    pub fn allows(&mut self, bytes: &[u8]) -> bool {
        let (state, utf8) = (self.state.clone(), self.utf8);
        let ok = self.advance(bytes);
        self.state = state;
        self.utf8 = utf8;
        ok
    }

    /// Sets `allowed[id]` for every text token the grammar allows next (others are left as
    /// they are; end-of-generation is the caller's: see [`Matcher::is_complete`]). One walk
    /// of the vocabulary's trie: a subtree is skipped as soon as its prefix is rejected.
    pub fn allowed_tokens(&mut self, trie: &TokenTrie, allowed: &mut [bool]) {
        if self.exhausted {
            return;
        }
        if self.scratch.is_empty() {
            self.scratch.push((Vec::new(), Utf8::default()));
        }
        self.scratch[0].0.clone_from(&self.state);
        self.scratch[0].1 = self.utf8;
        let budget = self.stacks.steps + MAX_WALK_STEPS;
        self.walk(trie, 0, trie.nodes.len(), 0, allowed, budget);
        for &(node, id) in &trie.duplicates {
            if let (Some(t), true) = (
                trie.nodes[node as usize].token(),
                (id as usize) < allowed.len(),
            ) {
                allowed[id as usize] = allowed.get(t as usize).copied().unwrap_or(false);
            }
        }
        self.check_limits();
        if self.stacks.steps > budget {
            self.exhausted = true;
        }
        if self.exhausted {
            allowed.fill(false);
        }
    }

    fn walk(
        &mut self,
        trie: &TokenTrie,
        lo: usize,
        hi: usize,
        depth: usize,
        out: &mut [bool],
        budget: u64,
    ) {
        if self.scratch.len() < depth + 2 {
            self.scratch
                .resize(depth + 2, (Vec::new(), Utf8::default()));
        }
        let (from, utf8) = std::mem::take(&mut self.scratch[depth]);
        let mut i = lo;
        while i < hi && self.stacks.steps <= budget {
            let node = trie.nodes[i];
            let (mut to, mut to_utf8) = std::mem::take(&mut self.scratch[depth + 1]);
            let ok = self
                .stacks
                .step_byte(&from, utf8, node.byte, &mut to, &mut to_utf8);
            self.scratch[depth + 1] = (to, to_utf8);
            if ok {
                if let Some(a) = node.token().and_then(|t| out.get_mut(t as usize)) {
                    *a = true;
                }
                if i + 1 < node.end as usize {
                    self.walk(trie, i + 1, node.end as usize, depth + 1, out, budget);
                }
            }
            i = node.end as usize;
        }
        self.scratch[depth] = (from, utf8);
    }
}
