//! The vocabulary as a byte trie, laid out in depth-first order so that a walk can skip a
//! whole subtree (every token that begins with a rejected prefix) in one jump.

use crate::Tokenizer;

const NO_TOKEN: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
pub(crate) struct TrieNode {
    pub(crate) byte: u8,
    /// The token whose bytes end here, or `NO_TOKEN`.
    pub(crate) token: u32,
    /// One past this node's subtree: its next sibling, or its parent's end.
    pub(crate) end: u32,
}

impl TrieNode {
    pub(crate) fn token(&self) -> Option<u32> {
        (self.token != NO_TOKEN).then_some(self.token)
    }
}

/// The text tokens of a vocabulary (control tokens are not text and are left out), by bytes.
/// The root's children are `nodes[0..]`; node `i`'s children start at `i + 1` and end at
/// `nodes[i].end`.
#[derive(Debug, Clone)]
pub struct TokenTrie {
    pub(crate) nodes: Vec<TrieNode>,
    /// Tokens with the same bytes as the token at a node (rare): (node, id).
    pub(crate) duplicates: Vec<(u32, u32)>,
}

impl TokenTrie {
    pub fn new(tok: &Tokenizer) -> Self {
        let n_vocab = tok.n_tokens();
        let mut keys: Vec<(&[u8], u32)> = (0..n_vocab as u32)
            .map(|id| (tok.token_bytes(id), id))
            .filter(|(b, _)| !b.is_empty())
            .collect();
        keys.sort_unstable();
        let mut t = Self {
            nodes: Vec::with_capacity(keys.len() * 3),
            duplicates: Vec::new(),
        };
        t.build(&keys, 0);
        t
    }

    /// Adds the subtrees for `keys` (sorted, sharing their first `depth` bytes, none of them
    /// exactly `depth` long).
    fn build(&mut self, keys: &[(&[u8], u32)], depth: usize) {
        let mut i = 0;
        while i < keys.len() {
            let b = keys[i].0[depth];
            let j = i + keys[i..].partition_point(|k| k.0[depth] == b);
            let node = self.nodes.len();
            self.nodes.push(TrieNode {
                byte: b,
                token: NO_TOKEN,
                end: 0,
            });
            let mut k = i;
            while k < j && keys[k].0.len() == depth + 1 {
                if self.nodes[node].token == NO_TOKEN {
                    self.nodes[node].token = keys[k].1;
                } else {
                    self.duplicates.push((node as u32, keys[k].1));
                }
                k += 1;
            }
            self.build(&keys[k..j], depth + 1);
            self.nodes[node].end = self.nodes.len() as u32;
            i = j;
        }
    }

    /// Bytes held (for the memory budget and the logs).
    pub fn bytes(&self) -> usize {
        self.nodes.len() * std::mem::size_of::<TrieNode>() + self.duplicates.len() * 8
    }
}
