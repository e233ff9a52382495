use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};

use super::*;
use crate::Tokenizer;
use crate::generate::sampler::Rng;

fn matcher(gbnf: &str) -> Matcher {
    Matcher::new(Arc::new(Grammar::parse(gbnf).expect("grammar parses")))
}

fn matches(gbnf: &str, text: &str) -> bool {
    let mut m = matcher(gbnf);
    m.advance(text.as_bytes()) && m.is_complete()
}

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::from_parts(crate::fixture::llama3_tokenizer_parts().expect("bundled"))
            .expect("tokenizer")
    })
}

#[test]
fn gbnf_elements_match_what_they_say() {
    let g = r#"
        # a comment
        root ::= "a" [0-9]+ tail? "!"{0,2}
        tail ::= ("x" | "yz") [^a-c\n]
    "#;
    for ok in ["a1", "a123", "a1xd", "a1yzz!!", "a0!"] {
        assert!(matches(g, ok), "{ok}");
    }
    for bad in ["a", "1", "a1xa", "a1x\n", "a1!!!", "a1yz"] {
        assert!(!matches(g, bad), "{bad}");
    }
    // Partial input: not complete yet, but nothing refused.
    let mut m = matcher(g);
    assert!(m.advance(b"a1y"));
    assert!(!m.is_complete() && m.can_continue());
    // A refused byte leaves the state as it was.
    assert!(!m.advance(b"q"));
    assert!(m.advance(b"zd"));
    assert!(m.is_complete());
}

#[test]
fn bounded_repetitions_count_exactly() {
    let g = r#"root ::= [ab]{2,4} "."{3} ("-" "x"){1,}"#;
    assert!(matches(g, "ab...-x"));
    assert!(matches(g, "abab...-x-x-x"));
    assert!(!matches(g, "a...-x"));
    assert!(!matches(g, "ababa...-x"));
    assert!(!matches(g, "ab..-x"));
    assert!(!matches(g, "ab..."));
}

#[test]
fn characters_split_across_tokens_are_followed_byte_by_byte() {
    let g = r#"root ::= "é" [α-ω]* "\u00e9""#;
    assert!(matches(g, "éαβωé"));
    assert!(!matches(g, "éaé"));
    let mut m = matcher(g);
    let text = "éβé".as_bytes();
    assert!(m.advance(&text[..1]), "a lead byte that can begin 'é'");
    assert!(m.advance(&text[1..2]));
    // 'β' is CE B2: CE alone could still be α-ω; CF 80 ('π' region) fine; 'Ā' (C4 80) not.
    assert!(m.allows(&[0xCE]));
    assert!(!m.allows(&[0xC4]));
    assert!(!m.allows(&[0x80]), "a lone continuation byte");
    assert!(m.advance(&text[2..]));
    assert!(m.is_complete());
}

#[test]
fn unusable_grammars_are_refused_with_the_reason() {
    let cases = [
        ("root ::= x", "undefined rule 'x'"),
        ("start ::= \"a\"", "no 'root' rule"),
        (
            "root ::= root \"a\" | \"b\"",
            "rule 'root' can reach itself",
        ),
        ("root ::= a\na ::= \"b\"? root", "can reach itself"),
        ("root ::= (\"a\"?)*", "can reach itself"),
        ("root ::= \"a\"{3,2}", "out of order"),
        ("root ::= \"a\"{99999}", "at most"),
        ("root ::= \"\\q\"", "unknown escape"),
        ("root ::= <[1]>", "token references"),
        ("root ::= \"a\"\nroot ::= \"b\"", "defined twice"),
        ("root ::= [z-a]", "out of order"),
        ("root ::= (\"a\"", "expected ')'"),
    ];
    for (g, want) in cases {
        let e = Grammar::parse(g).expect_err(g);
        assert!(e.0.contains(want), "{g}: {e}");
    }
    let deep = format!("root ::= {}\"a\"{}", "(".repeat(100), ")".repeat(100));
    assert!(Grammar::parse(&deep).unwrap_err().0.contains("nested"));
    let big = format!("root ::= {}", "\"a\"{10000} ".repeat(21));
    assert!(Grammar::parse(&big).unwrap_err().0.contains("too large"));
}

/// The trie walk against checking every token on its own, at states of a JSON grammar
/// reached by real text.
#[test]
fn the_trie_mask_equals_checking_every_token() {
    let tok = tokenizer();
    let trie = tok.token_trie();
    let g = Arc::new(Grammar::json_object());
    for prefix in [
        "",
        "{",
        "{\"ké",
        "{\"k\\",
        "{\"k\":",
        "{\"k\": -1",
        "{\"k\": [tr",
        "{\"k\": {}}",
    ] {
        let mut m = Matcher::new(g.clone());
        // Feed one byte at a time: a prefix may end inside a character.
        for b in prefix.bytes() {
            assert!(m.advance(&[b]), "{prefix}");
        }
        let mut fast = vec![false; tok.n_tokens()];
        m.allowed_tokens(trie, &mut fast);
        let slow: Vec<bool> = (0..tok.n_tokens() as u32)
            .map(|id| {
                let b = tok.token_bytes(id);
                !b.is_empty() && m.allows(b)
            })
            .collect();
        let n = fast.iter().filter(|&&a| a).count();
        assert_eq!(fast, slow, "prefix {prefix:?} ({n} allowed)");
        assert_eq!(m.is_complete(), prefix == "{\"k\": {}}");
    }
    // "{\"ké" ends a character's first byte in the middle of a token: split 'é'.
    let mut m = Matcher::new(g);
    assert!(m.advance(b"{\"k"));
    assert!(m.advance(&"é".as_bytes()[..1]));
    let mut allowed = vec![false; tok.n_tokens()];
    m.allowed_tokens(trie, &mut allowed);
    let first = allowed
        .iter()
        .position(|&a| a)
        .expect("some token completes é");
    assert_eq!(tok.token_bytes(first as u32)[0] & 0xC0, 0x80);
}

/// Generates text from a grammar by drawing random allowed tokens (the model's part, without
/// a model), ending where complete with probability 1/4, `None` past `max_tokens`.
fn random_text(g: Arc<Grammar>, seed: u64, max_tokens: usize) -> Option<String> {
    let tok = tokenizer();
    let trie = tok.token_trie();
    let mut rng = Rng::new(seed);
    let mut m = Matcher::new(g);
    let mut out = Vec::new();
    let mut allowed = vec![false; tok.n_tokens()];
    for _ in 0..max_tokens {
        if m.is_complete() && (!m.can_continue() || rng.next_u64().is_multiple_of(4)) {
            return Some(String::from_utf8(out).expect("the grammar keeps UTF-8 whole"));
        }
        allowed.fill(false);
        m.allowed_tokens(trie, &mut allowed);
        let ids: Vec<u32> = (0..allowed.len() as u32)
            .filter(|&i| allowed[i as usize])
            .collect();
        assert!(
            !ids.is_empty(),
            "a state with no way on: {:?}",
            String::from_utf8_lossy(&out)
        );
        let id = ids[(rng.next_u64() % ids.len() as u64) as usize];
        assert!(m.advance(tok.token_bytes(id)));
        out.extend_from_slice(tok.token_bytes(id));
    }
    None
}

#[test]
fn json_object_output_parses_as_an_object() {
    let g = Arc::new(Grammar::json_object());
    let mut done = 0;
    for seed in 0..12 {
        if let Some(text) = random_text(g.clone(), seed, 200) {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(v.is_object(), "{text}");
            done += 1;
        }
    }
    assert!(done > 0, "some texts ended within 200 tokens");
}

#[test]
fn schema_output_has_the_schema_shape() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "minItems": 1, "maxItems": 3},
            "kind": {"const": "person"},
            "ok": {"anyOf": [{"type": "boolean"}, {"type": "null"}]},
            "score": {"type": ["number", "null"]},
        },
        "required": ["name", "tags", "kind"],
        "additionalProperties": false,
    });
    let g = Arc::new(Grammar::from_json_schema(&schema).expect("compiles"));
    let mut done = 0;
    for seed in 0..10 {
        let Some(text) = random_text(g.clone(), seed, 200) else {
            continue;
        };
        done += 1;
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let o = v.as_object().expect("object");
        assert!(
            o.keys().all(|k| schema["properties"].get(k).is_some()),
            "{text}"
        );
        assert!(
            o["name"].as_str().expect("name").chars().count() <= 6,
            "{text}"
        );
        let tags = o["tags"].as_array().expect("tags");
        assert!((1..=3).contains(&tags.len()), "{text}");
        assert!(
            tags.iter().all(|t| t == "a" || t == "b" || t == 3),
            "{text}"
        );
        assert_eq!(o["kind"], "person");
        if let Some(a) = o.get("age") {
            assert!(a.is_i64(), "{text}");
        }
        if let Some(x) = o.get("ok") {
            assert!(x.is_boolean() || x.is_null(), "{text}");
        }
    }
    assert!(done >= 5, "{done} of 10 ended");
    // Properties come in the schema's order.
    let text = (0..10)
        .find_map(|s| random_text(g.clone(), s, 200))
        .expect("one ends");
    let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(&text)
        .expect("object")
        .keys()
        .cloned()
        .collect();
    let order: Vec<&String> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .filter(|k| keys.contains(k))
        .collect();
    assert_eq!(keys.iter().collect::<Vec<_>>(), order, "{text}");
}

#[test]
fn recursive_refs_compile_and_generate() {
    let schema = json!({
        "$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer"},
            "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
        }, "required": ["v", "kids"]}},
        "$ref": "#/$defs/node",
    });
    let g = Arc::new(Grammar::from_json_schema(&schema).expect("compiles"));
    let text = (0..8)
        .find_map(|s| random_text(g.clone(), s, 400))
        .expect("one ends");
    let v: Value = serde_json::from_str(&text).expect(&text);
    assert!(v["v"].is_i64() && v["kids"].is_array(), "{text}");
}

#[test]
fn unsupported_keywords_are_refused_by_name() {
    for (schema, kw) in [
        (json!({"type": "string", "pattern": "^a$"}), "pattern"),
        (json!({"type": "string", "format": "date"}), "format"),
        (json!({"type": "integer", "minimum": 3}), "minimum"),
        (json!({"oneOf": [{"type": "string"}]}), "oneOf"),
        (json!({"type": "array", "uniqueItems": true}), "uniqueItems"),
        (json!({"properties": {"a": {"not": {}}}}), "not"),
        (json!({"$ref": "https://example.com/s.json"}), "$ref"),
        (json!({"type": "object", "required": ["x"]}), "required"),
        (json!({"type": "strin"}), "type"),
        (json!({"allOf": [{}, {}]}), "allOf"),
        (json!({"type": "string", "maxLength": 100000}), "maxLength"),
        (json!(false), "false"),
    ] {
        let e = Grammar::from_json_schema(&schema).expect_err(&schema.to_string());
        assert_eq!(e.keyword, kw, "{schema}: {e}");
    }
}

/// A grammar ambiguous enough to need unbounded work per token is cut off at the matcher's
/// limits (bounded time and memory per request), never followed at any cost.
#[test]
fn an_ambiguous_grammar_exhausts_the_matcher_instead_of_the_server() {
    let tok = tokenizer();
    let g = Arc::new(Grammar::parse("root ::= (.{0,60}){0,60}").expect("no left recursion"));
    let mut m = Matcher::new(g.clone());
    assert!(m.advance("some text".as_bytes()));
    let mut allowed = vec![false; tok.n_tokens()];
    let started = std::time::Instant::now();
    m.allowed_tokens(tok.token_trie(), &mut allowed);
    assert!(m.is_exhausted());
    assert!(!allowed.contains(&true));
    assert!(!m.advance(b"x"), "nothing is allowed once exhausted");
    // The walk stopped at its budget (a full walk at 256 stacks would take seconds).
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // A JSON grammar stays far inside the limits.
    let mut j = Matcher::new(Arc::new(Grammar::json_object()));
    assert!(j.advance(b"{\"a\": \"text "));
    j.allowed_tokens(tok.token_trie(), &mut allowed);
    assert!(!j.is_exhausted() && allowed.contains(&true));
}
