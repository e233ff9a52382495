//! The prefix cache: keys and values of finished sequences, kept so that a request whose
//! tokens start the same way (a shared system prompt, the earlier turns of a chat) starts
//! from them instead of recomputing them. Bounded in bytes, least recently used out first.

use crate::model::KvCache;

/// Fewest shared tokens worth reusing (a BOS token and a chat header are shared by everyone).
pub const MIN_REUSE_TOKENS: usize = 16;

struct Entry {
    /// The ids whose keys and values `cache` holds, position by position.
    tokens: Vec<u32>,
    cache: KvCache,
    last_used: u64,
}

#[derive(Default)]
pub(crate) struct PrefixCache {
    entries: Vec<Entry>,
    budget: usize,
    bytes: usize,
    clock: u64,
}

/// Length of the common prefix of two token lists.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub(crate) fn new(budget_bytes: usize) -> Self {
        Self {
            budget: budget_bytes,
            ..Self::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Copies into `into` the longest cached prefix of `prompt`, leaving at least the prompt's
    /// last token to compute (its logits are needed); returns how many positions it holds
    /// (0 when nothing of at least [`MIN_REUSE_TOKENS`] is shared).
    pub(crate) fn fill(&mut self, prompt: &[u32], into: &mut KvCache) -> usize {
        let limit = prompt.len().saturating_sub(1).min(into.capacity());
        let best = self
            .entries
            .iter_mut()
            .map(|e| (common_prefix(&e.tokens, prompt).min(limit), e))
            .max_by_key(|(n, e)| (*n, e.last_used));
        match best {
            Some((n, e)) if n >= MIN_REUSE_TOKENS => {
                self.clock += 1;
                e.last_used = self.clock;
                into.copy_prefix(&e.cache, n);
                n
            }
            _ => 0,
        }
    }

    /// Keeps `cache` (holding `tokens`) for later requests, shrunk to its length, evicting the
    /// least recently used entries to stay within the budget. An entry whose tokens are a
    /// prefix of these is replaced: this one serves every request that one would.
    pub(crate) fn insert(&mut self, tokens: &[u32], mut cache: KvCache) {
        if tokens.len() < MIN_REUSE_TOKENS || self.budget == 0 {
            return;
        }
        cache.shrink_to_len();
        let size = cache.bytes();
        if size > self.budget {
            return;
        }
        let bytes = &mut self.bytes;
        self.entries.retain(|e| {
            let covered = e.tokens.len() <= tokens.len() && tokens.starts_with(&e.tokens);
            if covered {
                *bytes -= e.cache.bytes();
            }
            !covered
        });
        // Nothing to add when a kept entry already holds all of these tokens.
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.starts_with(tokens))
        {
            self.clock += 1;
            e.last_used = self.clock;
            return;
        }
        while self.bytes + size > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.bytes -= self.entries.swap_remove(oldest).cache.bytes();
        }
        self.clock += 1;
        self.bytes += size;
        self.entries.push(Entry {
            tokens: tokens.to_vec(),
            cache,
            last_used: self.clock,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Config;

    fn config() -> Config {
        let mut c = Config::for_tests();
        c.n_layer = 2;
        c
    }

    fn filled(c: &Config, tokens: &[u32]) -> KvCache {
        let mut k = KvCache::new(c, tokens.len() + 8);
        k.fill_for_tests(tokens);
        k
    }

    #[test]
    fn reuses_the_longest_shared_prefix_but_never_the_last_prompt_token() {
        let c = config();
        let a: Vec<u32> = (0..40).collect();
        let mut p = PrefixCache::new(usize::MAX);
        p.insert(&a, filled(&c, &a));
        // Shares 30 tokens.
        let mut b: Vec<u32> = (0..30).collect();
        b.extend([900, 901]);
        let mut into = KvCache::new(&c, 64);
        assert_eq!(p.fill(&b, &mut into), 30);
        assert_eq!(into.len(), 30);
        assert!(into.same_positions(&filled(&c, &a), 30));
        // The same prompt again: all but its last token.
        let mut into = KvCache::new(&c, 64);
        assert_eq!(p.fill(&a, &mut into), 39);
        // Too little shared.
        let short: Vec<u32> = (0..10).chain([5000]).collect();
        let mut into = KvCache::new(&c, 64);
        assert_eq!(p.fill(&short, &mut into), 0);
        assert!(into.is_empty());
    }

    #[test]
    fn evicts_the_least_recently_used_entry_to_stay_within_budget() {
        let c = config();
        let t = |base: u32| -> Vec<u32> { (base..base + 20).collect() };
        let one = {
            let mut k = filled(&c, &t(0));
            k.shrink_to_len();
            k.bytes()
        };
        let mut p = PrefixCache::new(2 * one);
        p.insert(&t(0), filled(&c, &t(0)));
        p.insert(&t(100), filled(&c, &t(100)));
        // Touch the first, then add a third: the second goes.
        let mut into = KvCache::new(&c, 64);
        let mut q = t(0);
        q.push(7);
        assert_eq!(p.fill(&q, &mut into), 20);
        p.insert(&t(200), filled(&c, &t(200)));
        assert_eq!(p.len(), 2);
        assert!(p.bytes() <= 2 * one);
        let mut into = KvCache::new(&c, 64);
        let mut q = t(100);
        q.push(7);
        assert_eq!(p.fill(&q, &mut into), 0, "evicted");
        let mut into = KvCache::new(&c, 64);
        let mut q = t(200);
        q.push(7);
        assert_eq!(p.fill(&q, &mut into), 20);
    }

    #[test]
    fn a_longer_sequence_replaces_its_prefix_and_a_zero_budget_keeps_nothing() {
        let c = config();
        let a: Vec<u32> = (0..20).collect();
        let ab: Vec<u32> = (0..30).collect();
        let mut p = PrefixCache::new(usize::MAX);
        p.insert(&a, filled(&c, &a));
        p.insert(&ab, filled(&c, &ab));
        assert_eq!(p.len(), 1);
        p.insert(&a, filled(&c, &a));
        assert_eq!(p.len(), 1, "already covered");
        let mut off = PrefixCache::new(0);
        off.insert(&a, filled(&c, &a));
        assert_eq!(off.len(), 0);
    }
}
