//! Token sampling.

/// Sampling controls with llama.cpp / OpenAI meanings. `temperature <= 0` is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f32,
    /// 0.0 disables min-p.
    pub min_p: f32,
    /// 1.0 disables the repetition penalty.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Same seed, same parameters, same prompt: same output. `None` picks a random seed.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            penalty_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

/// Below this temperature sampling is greedy. A logit gap times `1 / temperature` is far past
/// what `exp` can tell from zero long before this, and for temperatures in (0, ~3e-39]
/// `1 / temperature` is infinite, which turned the softmax into NaNs (and the draw into the
/// least likely token).
pub const GREEDY_BELOW_TEMPERATURE: f32 = 1e-5;

impl SamplingParams {
    /// The ranges the engine computes with (OpenAI's where OpenAI has the parameter): an
    /// error names the parameter. `repeat_penalty` must be positive: it divides the logits.
    pub fn validate(&self) -> Result<(), crate::EngineError> {
        let check = |param: &'static str, v: f32, lo: f32, hi: f32, lo_open: bool| {
            let above_lo = if lo_open { v > lo } else { v >= lo };
            if v.is_finite() && above_lo && v <= hi {
                Ok(())
            } else {
                let lo_bracket = if lo_open { "(" } else { "[" };
                Err(crate::EngineError::invalid_param(
                    param,
                    format!("must be a number in {lo_bracket}{lo}, {hi}]; got {v}"),
                ))
            }
        };
        check("temperature", self.temperature, 0.0, 2.0, false)?;
        check("top_p", self.top_p, 0.0, 1.0, false)?;
        check("min_p", self.min_p, 0.0, 1.0, false)?;
        check("repeat_penalty", self.repeat_penalty, 0.0, 10.0, true)?;
        check("presence_penalty", self.presence_penalty, -2.0, 2.0, false)?;
        check(
            "frequency_penalty",
            self.frequency_penalty,
            -2.0,
            2.0,
            false,
        )?;
        Ok(())
    }

    /// Deterministic argmax decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// SplitMix64: small, fast, and reproducible across platforms for a given seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the next token from logits, applying the penalties and filters in llama.cpp's
/// order: penalties, top-k, top-p, min-p, temperature, then a draw.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Reused candidate buffer: (id, logit or probability).
    cand: Vec<(u32, f32)>,
    counts: rustc_hash::FxHashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ (std::process::id() as u64) << 32
        });
        Self {
            params,
            rng: Rng::new(seed),
            cand: Vec::new(),
            counts: Default::default(),
        }
    }

    /// `history` = prompt and generated ids so far (the penalties look at its tail).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let penalize =
            p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        if penalize && p.penalty_last_n > 0 {
            self.counts.clear();
            let start = history.len().saturating_sub(p.penalty_last_n);
            for &t in &history[start..] {
                *self.counts.entry(t).or_insert(0) += 1;
            }
            for (&t, &n) in &self.counts {
                let Some(l) = logits.get_mut(t as usize) else {
                    continue;
                };
                if p.repeat_penalty != 1.0 {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
                *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
        if p.temperature < GREEDY_BELOW_TEMPERATURE {
            return argmax(logits);
        }
        let c = &mut self.cand;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let by_logit_desc =
            |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            c.truncate(p.top_k);
        }
        c.sort_unstable_by(by_logit_desc);
        // Probabilities at temperature 1 for the top-p / min-p filters (llama.cpp's order).
        let softmax = |c: &mut Vec<(u32, f32)>, scale: f32| -> Vec<f32> {
            let max = c[0].1;
            let mut probs: Vec<f32> = c.iter().map(|&(_, l)| ((l - max) * scale).exp()).collect();
            let sum: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= sum);
            probs
        };
        if p.top_p < 1.0 {
            let probs = softmax(c, 1.0);
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (i, &pr) in probs.iter().enumerate() {
                cum += pr;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let probs = softmax(c, 1.0);
            let floor = probs[0] * p.min_p;
            let keep = probs.iter().take_while(|&&pr| pr >= floor).count();
            c.truncate(keep.max(1));
        }
        let probs = softmax(c, 1.0 / p.temperature);
        let r = self.rng.next_f64() as f32;
        let mut cum = 0.0;
        for (i, &pr) in probs.iter().enumerate() {
            cum += pr;
            if r < cum {
                return c[i].0;
            }
        }
        c[c.len() - 1].0
    }
}

/// Index of the largest logit (the lowest index on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let mut l = logits();
        let best = argmax(&l);
        assert_eq!(
            Sampler::new(SamplingParams::greedy()).sample(&mut l, &[]),
            best
        );
    }

    #[test]
    fn seed_reproduces_and_differs() {
        let p = |seed| SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..Default::default()
        };
        let run = |seed| {
            let mut s = Sampler::new(p(seed));
            (0..32)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy_and_penalties_move_the_choice() {
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        let best = argmax(&logits());
        assert_eq!(s.sample(&mut logits(), &[]), best);
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 100.0,
            ..SamplingParams::greedy()
        });
        assert_ne!(s.sample(&mut logits(), &[best]), best);
    }

    #[test]
    fn tiny_temperatures_are_greedy_not_the_least_likely_token() {
        let best = argmax(&logits());
        for t in [f32::from_bits(1), 1e-39, 1e-30, 1e-6] {
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: Some(5),
                ..Default::default()
            });
            for _ in 0..10 {
                assert_eq!(s.sample(&mut logits(), &[]), best, "temperature {t:e}");
            }
        }
    }

    #[test]
    fn values_that_cannot_be_computed_are_refused_by_name() {
        let bad = [
            (
                "repeat_penalty",
                SamplingParams {
                    repeat_penalty: 0.0,
                    ..Default::default()
                },
            ),
            (
                "repeat_penalty",
                SamplingParams {
                    repeat_penalty: -1.0,
                    ..Default::default()
                },
            ),
            (
                "temperature",
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
            ),
            (
                "temperature",
                SamplingParams {
                    temperature: -0.5,
                    ..Default::default()
                },
            ),
            (
                "top_p",
                SamplingParams {
                    top_p: f32::INFINITY,
                    ..Default::default()
                },
            ),
            (
                "min_p",
                SamplingParams {
                    min_p: 1.5,
                    ..Default::default()
                },
            ),
            (
                "presence_penalty",
                SamplingParams {
                    presence_penalty: 3.0,
                    ..Default::default()
                },
            ),
            (
                "frequency_penalty",
                SamplingParams {
                    frequency_penalty: f32::NAN,
                    ..Default::default()
                },
            ),
        ];
        for (name, p) in bad {
            match p.validate() {
                Err(crate::EngineError::InvalidParam { param, .. }) => assert_eq!(param, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert!(SamplingParams::default().validate().is_ok());
        assert!(
            SamplingParams {
                temperature: 1e-39,
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn min_p_keeps_only_the_dominant_token() {
        let mut l = vec![0.0f32; 10];
        l[3] = 20.0;
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            seed: Some(3),
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut l.clone(), &[]), 3);
        }
    }
}
