//! Pre-tokenizers: split text into pieces before BPE.
//!
//! Hand-written matchers that reproduce the regular expressions' leftmost-first semantics
//! (the Llama 3 pattern needs a look-ahead, which the `regex` crate lacks, and a direct
//! matcher is much faster than a backtracking engine).

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

/// Which splitting rule to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreTokenizer {
    /// The Llama 3 pattern (what the model was trained with), with "ignore merges".
    #[default]
    Llama3,
    /// llama.cpp's fallback for files without `tokenizer.ggml.pre` (what bitnet.cpp uses on
    /// the official file): punctuation runs, GPT-2 pattern, digit runs, groups of three digits.
    LlamaCppDefault,
    /// Qwen2 / Qwen3 (`tokenizer.ggml.pre = qwen2`): the Llama 3 pattern with digits one by
    /// one (`\p{N}` instead of `\p{N}{1,3}`), BPE merges always applied.
    Qwen2,
}

impl PreTokenizer {
    /// Most digits one piece may hold.
    fn digit_run(self) -> usize {
        match self {
            Self::Qwen2 => 1,
            _ => 3,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

#[inline]
fn class(c: char) -> Class {
    if c.is_ascii() {
        return match c {
            'a'..='z' | 'A'..='Z' => Class::Letter,
            '0'..='9' => Class::Number,
            ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' => Class::Space,
            _ => Class::Other,
        };
    }
    match c.general_category_group() {
        GeneralCategoryGroup::Letter => Class::Letter,
        GeneralCategoryGroup::Number => Class::Number,
        _ if c.is_whitespace() => Class::Space,
        _ => Class::Other,
    }
}

#[inline]
fn is_punct(c: char) -> bool {
    if c.is_ascii() {
        // ASCII \p{P} plus the listed symbols: every ASCII punctuation or symbol but '`'.
        return c.is_ascii_punctuation() && c != '`';
    }
    c.general_category_group() == GeneralCategoryGroup::Punctuation
}

/// Text decoded to chars once, with byte offsets (`offs[i]` = start of char i, plus the end).
struct Chars {
    c: Vec<char>,
    cls: Vec<Class>,
    offs: Vec<usize>,
}

impl Chars {
    fn new(text: &str) -> Self {
        let mut c = Vec::with_capacity(text.len());
        let mut offs = Vec::with_capacity(text.len() + 1);
        for (o, ch) in text.char_indices() {
            c.push(ch);
            offs.push(o);
        }
        offs.push(text.len());
        let cls = c.iter().map(|&ch| class(ch)).collect();
        Self { c, cls, offs }
    }
}

/// Appends the byte ranges of the pieces of `text` to `out`.
pub fn split(rule: PreTokenizer, text: &str, out: &mut Vec<(usize, usize)>) {
    let ch = Chars::new(text);
    match rule {
        PreTokenizer::Llama3 | PreTokenizer::Qwen2 => {
            split_llama3(&ch, 0, ch.c.len(), rule.digit_run(), out)
        }
        PreTokenizer::LlamaCppDefault => split_default(&ch, out),
    }
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// with `D = digits` (3: Llama 3, 1: Qwen2).
fn split_llama3(
    ch: &Chars,
    start: usize,
    end: usize,
    digits: usize,
    out: &mut Vec<(usize, usize)>,
) {
    let (c, cls) = (&ch.c, &ch.cls);
    let is_nl = |i: usize| c[i] == '\r' || c[i] == '\n';
    let mut i = start;
    while i < end {
        let len = llama3_match(c, cls, i, end, digits, &is_nl);
        out.push((ch.offs[i], ch.offs[i + len]));
        i += len;
    }
}

fn llama3_match(
    c: &[char],
    cls: &[Class],
    i: usize,
    n: usize,
    digits: usize,
    is_nl: &dyn Fn(usize) -> bool,
) -> usize {
    let lower = |j: usize| c[j].to_ascii_lowercase();
    // 1. contractions, case-insensitive
    if c[i] == '\'' && i + 1 < n {
        if matches!(lower(i + 1), 's' | 't' | 'm' | 'd') {
            return 2;
        }
        if i + 2 < n
            && matches!(
                (lower(i + 1), lower(i + 2)),
                ('r', 'e') | ('v', 'e') | ('l', 'l')
            )
        {
            return 3;
        }
    }
    let letters_from = |mut j: usize| {
        while j < n && cls[j] == Class::Letter {
            j += 1;
        }
        j
    };
    // 2. [^\r\n\p{L}\p{N}]?\p{L}+
    if cls[i] == Class::Letter {
        return letters_from(i + 1) - i;
    }
    if cls[i] != Class::Number && !is_nl(i) && i + 1 < n && cls[i + 1] == Class::Letter {
        return letters_from(i + 2) - i;
    }
    // 3. \p{N}{1,digits}
    if cls[i] == Class::Number {
        let mut j = i + 1;
        while j < n && j < i + digits && cls[j] == Class::Number {
            j += 1;
        }
        return j - i;
    }
    // 4. ' '?[^\s\p{L}\p{N}]+[\r\n]*
    let p = if c[i] == ' ' && i + 1 < n && cls[i + 1] == Class::Other {
        i + 1
    } else {
        i
    };
    if cls[p] == Class::Other {
        let mut j = p + 1;
        while j < n && cls[j] == Class::Other {
            j += 1;
        }
        while j < n && is_nl(j) {
            j += 1;
        }
        return j - i;
    }
    // Whitespace alternatives; cls[i] == Space here.
    let mut e = i;
    while e < n && cls[e] == Class::Space {
        e += 1;
    }
    // 5. \s*[\r\n]+ : up to and including the last newline of the whitespace run.
    if let Some(last_nl) = (i..e).rev().find(|&j| is_nl(j)) {
        return last_nl + 1 - i;
    }
    // 6. \s+(?!\S) : the run, less its last char when text follows.
    if e == n {
        return e - i;
    }
    if e - i >= 2 {
        return e - i - 1;
    }
    // 7. \s+
    e - i
}

/// llama.cpp's default: four expressions, each splitting the pieces the previous one left
/// (matches and the gaps between them both become pieces).
fn split_default(ch: &Chars, out: &mut Vec<(usize, usize)>) {
    let n = ch.c.len();
    // Pieces as char index ranges.
    let mut pieces: Vec<(usize, usize)> = Vec::new();
    // 1. [\p{P}\$\+<=>\^~\|]+
    let mut i = 0;
    while i < n {
        let p = is_punct(ch.c[i]);
        let mut j = i + 1;
        while j < n && is_punct(ch.c[j]) == p {
            j += 1;
        }
        pieces.push((i, j));
        i = j;
    }
    // 2. GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
    let mut next = Vec::with_capacity(pieces.len());
    for &(s, e) in &pieces {
        let mut i = s;
        while i < e {
            let len = gpt2_match(&ch.c, &ch.cls, i, e);
            next.push((i, i + len));
            i += len;
        }
    }
    // 3. \p{N}+ and 4. [0-9]{3}: digit runs, then ASCII digits in groups of three.
    let mut pieces = Vec::with_capacity(next.len());
    for (s, e) in next {
        let mut i = s;
        while i < e {
            let num = ch.cls[i] == Class::Number;
            let mut j = i + 1;
            while j < e && (ch.cls[j] == Class::Number) == num {
                j += 1;
            }
            if num {
                let mut k = i;
                while k < j {
                    let ascii3 = k + 3 <= j && ch.c[k..k + 3].iter().all(char::is_ascii_digit);
                    if ascii3 {
                        pieces.push((k, k + 3));
                        k += 3;
                    } else {
                        // Non-matching digits stay together until the next group of three.
                        let mut m = k + 1;
                        while m < j
                            && !(m + 3 <= j && ch.c[m..m + 3].iter().all(char::is_ascii_digit))
                        {
                            m += 1;
                        }
                        pieces.push((k, m));
                        k = m;
                    }
                }
            } else {
                pieces.push((i, j));
            }
            i = j;
        }
    }
    out.extend(pieces.into_iter().map(|(s, e)| (ch.offs[s], ch.offs[e])));
}

fn gpt2_match(c: &[char], cls: &[Class], i: usize, n: usize) -> usize {
    if c[i] == '\'' && i + 1 < n {
        if matches!(c[i + 1], 's' | 't' | 'm' | 'd') {
            return 2;
        }
        if i + 2 < n && matches!((c[i + 1], c[i + 2]), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
            return 3;
        }
    }
    let p = if c[i] == ' ' && i + 1 < n && cls[i + 1] != Class::Space {
        i + 1
    } else {
        i
    };
    let run = |k: Class| {
        let mut j = p + 1;
        while j < n && cls[j] == k {
            j += 1;
        }
        j - i
    };
    match cls[p] {
        Class::Letter => return run(Class::Letter),
        Class::Number => return run(Class::Number),
        Class::Other => return run(Class::Other),
        Class::Space => {}
    }
    let mut e = i;
    while e < n && cls[e] == Class::Space {
        e += 1;
    }
    if e - i > 1 && e < n { e - i - 1 } else { e - i }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(rule: PreTokenizer, s: &str) -> Vec<&str> {
        let mut v = Vec::new();
        split(rule, s, &mut v);
        v.into_iter().map(|(a, b)| &s[a..b]).collect()
    }

    #[test]
    fn llama3_splits() {
        let p = |s| pieces(PreTokenizer::Llama3, s);
        assert_eq!(p("Hello world"), ["Hello", " world"]);
        assert_eq!(p("I'LL don't"), ["I", "'LL", " don", "'t"]);
        assert_eq!(p("12345 x"), ["123", "45", " x"]);
        assert_eq!(p("a  b"), ["a", " ", " b"]);
        assert_eq!(p("a \n\n b"), ["a", " \n\n", " b"]);
        assert_eq!(p("x  "), ["x", "  "]);
        assert_eq!(p(" ,.\n\nok"), [" ,.\n\n", "ok"]);
        assert_eq!(p("\tword"), ["\tword"]);
    }

    #[test]
    fn default_splits() {
        let p = |s| pieces(PreTokenizer::LlamaCppDefault, s);
        assert_eq!(p("Hello, world!"), ["Hello", ",", " world", "!"]);
        assert_eq!(p("1234567"), ["123", "456", "7"]);
        assert_eq!(p("a  b"), ["a", " ", " b"]);
    }
}
