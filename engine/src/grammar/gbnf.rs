//! GBNF (llama.cpp's grammar format) to [`Grammar`]: rules `name ::= alternatives`, string
//! literals, character classes (`[a-z]`, `[^"\\]`), `.`, groups, `*` `+` `?` `{m}` `{m,}`
//! `{m,n}`, `#` comments. A rule ends where the next `name ::=` begins.

use rustc_hash::FxHashMap;

use super::{CharClass, Elem, Grammar, GrammarError, MAX_GRAMMAR_ELEMENTS, MAX_REPEAT};

/// Deepest nesting of parentheses (the parser recurses on them).
const MAX_NESTING: usize = 64;

#[derive(Debug)]
enum Item {
    Chars(CharClass),
    Ref(String, usize),
    Group(Vec<Vec<Item>>),
    Repeat(Box<Item>, u32, Option<u32>),
}

/// A rule as written: its name, its line, its alternatives.
type RuleDef = (String, usize, Vec<Vec<Item>>);

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

fn err<T>(msg: impl Into<String>) -> Result<T, GrammarError> {
    Err(GrammarError(msg.into()))
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl<'a> Parser<'a> {
    fn line(&self) -> usize {
        1 + self.s[..self.i.min(self.s.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b) = self.peek() {
            if b == b'#' {
                while self.peek().is_some_and(|b| b != b'\n') {
                    self.i += 1;
                }
            } else if b.is_ascii_whitespace() {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn ident(&mut self) -> Result<String, GrammarError> {
        let start = self.i;
        while self.peek().is_some_and(is_ident) {
            self.i += 1;
        }
        if start == self.i {
            return err(format!("expected a rule name at line {}", self.line()));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// Whether a rule definition (`name ::=`) starts here.
    fn at_definition(&self) -> bool {
        let mut j = self.i;
        while self.s.get(j).copied().is_some_and(is_ident) {
            j += 1;
        }
        if j == self.i {
            return false;
        }
        while self.s.get(j).is_some_and(|b| b.is_ascii_whitespace()) {
            j += 1;
        }
        self.s[j..].starts_with(b"::=")
    }

    fn rules(&mut self) -> Result<Vec<RuleDef>, GrammarError> {
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            if self.peek().is_none() {
                return Ok(out);
            }
            let line = self.line();
            let name = self.ident()?;
            self.skip_ws();
            if !self.s[self.i..].starts_with(b"::=") {
                return err(format!("expected '::=' after '{name}' at line {line}"));
            }
            self.i += 3;
            let alts = self.alternates()?;
            if let Some(b) = self.peek().filter(|_| !self.at_definition()) {
                return err(format!(
                    "unexpected '{}' at line {}",
                    b as char,
                    self.line()
                ));
            }
            out.push((name, line, alts));
        }
    }

    fn alternates(&mut self) -> Result<Vec<Vec<Item>>, GrammarError> {
        let mut alts = vec![self.sequence()?];
        while self.peek() == Some(b'|') {
            self.i += 1;
            alts.push(self.sequence()?);
        }
        Ok(alts)
    }

    fn sequence(&mut self) -> Result<Vec<Item>, GrammarError> {
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            let Some(b) = self.peek() else { break };
            let item = match b {
                b'|' | b')' => break,
                _ if is_ident(b) => {
                    if self.at_definition() {
                        break;
                    }
                    let line = self.line();
                    Item::Ref(self.ident()?, line)
                }
                b'"' => {
                    self.i += 1;
                    let mut chars = Vec::new();
                    loop {
                        match self.peek() {
                            None => return err("unterminated string literal"),
                            Some(b'"') => {
                                self.i += 1;
                                break;
                            }
                            Some(_) => chars.push(self.char()?),
                        }
                    }
                    let mut seq: Vec<Item> = chars
                        .into_iter()
                        .map(|c| Item::Chars(CharClass::new(vec![(c, c)], false)))
                        .collect();
                    if seq.len() == 1 {
                        seq.pop().expect("one")
                    } else {
                        Item::Group(vec![seq])
                    }
                }
                b'[' => {
                    self.i += 1;
                    let negated = self.peek() == Some(b'^');
                    if negated {
                        self.i += 1;
                    }
                    let mut ranges = Vec::new();
                    loop {
                        match self.peek() {
                            None => return err("unterminated character class"),
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            Some(_) => {
                                let lo = self.char()?;
                                let mut hi = lo;
                                if self.peek() == Some(b'-')
                                    && self.s.get(self.i + 1).is_some_and(|&b| b != b']')
                                {
                                    self.i += 1;
                                    hi = self.char()?;
                                }
                                if hi < lo {
                                    return err(format!(
                                        "character range out of order at line {}",
                                        self.line()
                                    ));
                                }
                                ranges.push((lo, hi));
                            }
                        }
                    }
                    Item::Chars(CharClass::new(ranges, negated))
                }
                b'.' => {
                    self.i += 1;
                    Item::Chars(CharClass::new(vec![(0, 0x10FFFF)], false))
                }
                b'(' => {
                    self.i += 1;
                    self.depth += 1;
                    if self.depth > MAX_NESTING {
                        return err(format!(
                            "parentheses nested deeper than {MAX_NESTING} levels"
                        ));
                    }
                    let alts = self.alternates()?;
                    self.skip_ws();
                    if self.peek() != Some(b')') {
                        return err(format!("expected ')' at line {}", self.line()));
                    }
                    self.i += 1;
                    self.depth -= 1;
                    Item::Group(alts)
                }
                b'<' => {
                    return err(format!(
                        "token references (<...>) are not supported (line {})",
                        self.line()
                    ));
                }
                other => {
                    return err(format!(
                        "unexpected '{}' at line {}",
                        other as char,
                        self.line()
                    ));
                }
            };
            let item = self.postfix(item)?;
            items.push(item);
        }
        Ok(items)
    }

    fn postfix(&mut self, mut item: Item) -> Result<Item, GrammarError> {
        loop {
            // Spaces (not line ends) may sit between an element and its operator.
            while self.peek().is_some_and(|b| b == b' ' || b == b'\t') {
                self.i += 1;
            }
            let (min, max) = match self.peek() {
                Some(b'*') => (0, None),
                Some(b'+') => (1, None),
                Some(b'?') => (0, Some(1)),
                Some(b'{') => {
                    self.i += 1;
                    let min = self.number()?;
                    let max = if self.peek() == Some(b',') {
                        self.i += 1;
                        if self.peek() == Some(b'}') {
                            None
                        } else {
                            Some(self.number()?)
                        }
                    } else {
                        Some(min)
                    };
                    if self.peek() != Some(b'}') {
                        return err(format!("expected '}}' at line {}", self.line()));
                    }
                    if max.is_some_and(|m| m < min) {
                        return err(format!(
                            "repetition {{{min},{}}} has its bounds out of order",
                            max.unwrap_or(0)
                        ));
                    }
                    (min, max)
                }
                _ => return Ok(item),
            };
            self.i += 1;
            item = Item::Repeat(Box::new(item), min, max);
        }
    }

    fn number(&mut self) -> Result<u32, GrammarError> {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
        match digits.parse::<u32>() {
            Ok(n) if n <= MAX_REPEAT => Ok(n),
            Ok(_) | Err(_) if !digits.is_empty() => err(format!(
                "a repetition count may be at most {MAX_REPEAT} (line {})",
                self.line()
            )),
            _ => err(format!("expected a number at line {}", self.line())),
        }
    }

    /// One character of a literal or class, escapes decoded.
    fn char(&mut self) -> Result<u32, GrammarError> {
        let rest = std::str::from_utf8(&self.s[self.i..])
            .map_err(|_| GrammarError("the grammar is not valid UTF-8".into()))?;
        let c = rest
            .chars()
            .next()
            .ok_or(GrammarError("unexpected end".into()))?;
        self.i += c.len_utf8();
        if c != '\\' {
            return Ok(c as u32);
        }
        let e = self.peek().ok_or(GrammarError("unexpected end".into()))?;
        self.i += 1;
        let hex = |p: &mut Self, n: usize| -> Result<u32, GrammarError> {
            let h = p
                .s
                .get(p.i..p.i + n)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .filter(|&v| char::from_u32(v).is_some())
                .ok_or_else(|| GrammarError(format!("bad \\x/\\u escape at line {}", p.line())))?;
            p.i += n;
            Ok(h)
        };
        Ok(match e {
            b'n' => '\n' as u32,
            b'r' => '\r' as u32,
            b't' => '\t' as u32,
            b'x' => hex(self, 2)?,
            b'u' => hex(self, 4)?,
            b'U' => hex(self, 8)?,
            b'\\' | b'"' | b'[' | b']' | b'-' | b'^' | b'/' | b'.' | b'\'' => e as u32,
            other => {
                return err(format!(
                    "unknown escape '\\{}' at line {}",
                    other as char,
                    self.line()
                ));
            }
        })
    }
}

struct Builder {
    g: Grammar,
    ids: FxHashMap<String, u32>,
}

impl Builder {
    fn push_alts(&mut self, rule: u32, alts: Vec<Vec<Elem>>) -> Result<(), GrammarError> {
        for alt in alts {
            if self.g.elems.len() + alt.len() + 1 > MAX_GRAMMAR_ELEMENTS {
                return err(format!(
                    "the grammar is too large (more than {MAX_GRAMMAR_ELEMENTS} elements)"
                ));
            }
            self.g.rules[rule as usize].push(self.g.elems.len() as u32);
            self.g.elems.extend(alt);
            self.g.elems.push(Elem::End);
        }
        Ok(())
    }

    fn helper(&mut self, base: &str, alts: Vec<Vec<Elem>>) -> Result<u32, GrammarError> {
        let id = self.g.rules.len() as u32;
        self.g.rules.push(Vec::new());
        self.g.names.push(format!("{base}-{id}"));
        self.push_alts(id, alts)?;
        Ok(id)
    }

    fn lower_seq(&mut self, base: &str, items: Vec<Item>) -> Result<Vec<Elem>, GrammarError> {
        let mut out = Vec::new();
        for item in items {
            out.extend(self.lower(base, item)?);
            if out.len() > MAX_GRAMMAR_ELEMENTS {
                return err(format!(
                    "the grammar is too large (more than {MAX_GRAMMAR_ELEMENTS} elements)"
                ));
            }
        }
        Ok(out)
    }

    fn lower(&mut self, base: &str, item: Item) -> Result<Vec<Elem>, GrammarError> {
        Ok(match item {
            Item::Chars(c) => {
                let i = match self.g.classes.iter().position(|x| *x == c) {
                    Some(i) => i,
                    None => {
                        self.g.classes.push(c);
                        self.g.classes.len() - 1
                    }
                };
                vec![Elem::Chars(i as u32)]
            }
            Item::Ref(name, line) => match self.ids.get(&name) {
                Some(&id) => vec![Elem::Ref(id)],
                None => return err(format!("undefined rule '{name}' (line {line})")),
            },
            Item::Group(mut alts) if alts.len() == 1 => {
                self.lower_seq(base, alts.pop().expect("one"))?
            }
            Item::Group(alts) => {
                let lowered = alts
                    .into_iter()
                    .map(|a| self.lower_seq(base, a))
                    .collect::<Result<Vec<_>, _>>()?;
                vec![Elem::Ref(self.helper(base, lowered)?)]
            }
            Item::Repeat(x, min, max) => {
                let seq = self.lower(base, *x)?;
                let unit = if seq.len() == 1 {
                    seq
                } else {
                    vec![Elem::Ref(self.helper(base, vec![seq])?)]
                };
                let copies = (min as usize).saturating_mul(unit.len());
                if copies > MAX_GRAMMAR_ELEMENTS {
                    return err(format!(
                        "the grammar is too large (more than {MAX_GRAMMAR_ELEMENTS} elements)"
                    ));
                }
                let mut out = Vec::with_capacity(copies + 1);
                for _ in 0..min {
                    out.extend_from_slice(&unit);
                }
                match max {
                    None => {
                        // S ::= unit S | (empty)
                        let id = self.g.rules.len() as u32;
                        self.g.rules.push(Vec::new());
                        self.g.names.push(format!("{base}-{id}"));
                        let mut more = unit.clone();
                        more.push(Elem::Ref(id));
                        self.push_alts(id, vec![more, Vec::new()])?;
                        out.push(Elem::Ref(id));
                    }
                    Some(max) if max > min => {
                        // O1 ::= unit | (empty); Ok ::= unit O(k-1) | (empty)
                        let mut prev: Option<u32> = None;
                        for _ in min..max {
                            let mut alt = unit.clone();
                            if let Some(p) = prev {
                                alt.push(Elem::Ref(p));
                            }
                            prev = Some(self.helper(base, vec![alt, Vec::new()])?);
                        }
                        out.push(Elem::Ref(prev.expect("max > min")));
                    }
                    Some(_) => {}
                }
                out
            }
        })
    }
}

pub(super) fn parse(text: &str) -> Result<Grammar, GrammarError> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    let rules = p.rules()?;
    let mut b = Builder {
        g: Grammar {
            elems: Vec::new(),
            classes: Vec::new(),
            rules: Vec::new(),
            names: Vec::new(),
            root: 0,
        },
        ids: FxHashMap::default(),
    };
    for (name, line, _) in &rules {
        if b.ids.contains_key(name) {
            return err(format!("rule '{name}' is defined twice (line {line})"));
        }
        b.ids.insert(name.clone(), b.g.rules.len() as u32);
        b.g.rules.push(Vec::new());
        b.g.names.push(name.clone());
    }
    b.g.root = match b.ids.get("root") {
        Some(&r) => r,
        None => return err("the grammar has no 'root' rule"),
    };
    for (name, _, alts) in rules {
        let id = b.ids[&name];
        let lowered = alts
            .into_iter()
            .map(|a| b.lower_seq(&name, a))
            .collect::<Result<Vec<_>, _>>()?;
        b.push_alts(id, lowered)?;
    }
    Ok(b.g)
}
