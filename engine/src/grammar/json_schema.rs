//! JSON Schema to GBNF. Supported: `type` (one or a list), objects with `properties`,
//! `required` and `additionalProperties`, arrays with `items`, `minItems` and `maxItems`,
//! strings with `minLength` and `maxLength`, numbers, integers, booleans, null, `enum`,
//! `const`, `anyOf`, `allOf` of one schema, local `$ref`s (`#`, `#/$defs/...`,
//! `#/definitions/...`, recursion included) and annotations. Any other keyword is refused with
//! its name: the output always matches the schema, never a looser one.
//!
//! The output is compact JSON with limited whitespace, properties in the schema's order;
//! optional properties may be left out. Numbers have at most 16 integer and 16 fraction digits and a two-digit exponent (always
//! within an f64).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{Map, Value};

/// A schema this compiler refuses: the keyword at fault (empty when it is the schema as a
/// whole) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SchemaError {
    pub keyword: String,
    pub message: String,
}

fn refuse<T>(keyword: &str, message: impl Into<String>) -> Result<T, SchemaError> {
    Err(SchemaError {
        keyword: keyword.to_owned(),
        message: message.into(),
    })
}

/// Deepest nesting of schemas inside schemas (the compiler recurses on them).
const MAX_DEPTH: usize = 64;
/// Most characters `maxLength` / `minLength` may ask for, items `maxItems` / `minItems`.
const MAX_COUNT: u64 = 4096;

/// Keywords that describe without constraining.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "$defs",
    "definitions",
    "deprecated",
    "readOnly",
    "writeOnly",
];

const COMMON: &str = r#"
ws ::= ( " " | "\n" [ \t]{0,16} )?
json-string ::= "\"" json-char* "\""
json-char ::= [^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" json-unit )
# \u escapes of UTF-16 surrogates (D800-DFFF) are left out: not characters on their own.
json-unit ::= [0-9a-cA-CefEF] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}
json-integer ::= "-"? ( "0" | [1-9] [0-9]{0,15} )
json-number ::= json-integer ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,2} )?
json-value ::= json-object | json-array | json-string | json-number | "true" | "false" | "null"
json-object ::= "{" ws ( json-string ws ":" ws json-value ws ( "," ws json-string ws ":" ws json-value ws )* )? "}"
json-array ::= "[" ws ( json-value ws ( "," ws json-value ws )* )? "]"
"#;

/// Any JSON object, as GBNF.
pub fn json_object_gbnf() -> String {
    format!("root ::= json-object\n{COMMON}")
}

/// GBNF for the JSON texts that are instances of `schema`.
pub fn to_gbnf(schema: &Value) -> Result<String, SchemaError> {
    let mut c = Compiler {
        root: schema,
        rules: BTreeMap::new(),
        refs: BTreeMap::new(),
        next: 0,
    };
    let body = c.visit(schema, 0)?;
    let mut out = format!("root ::= {body}\n");
    for (name, rule) in &c.rules {
        let _ = writeln!(out, "{name} ::= {rule}");
    }
    out.push_str(COMMON);
    Ok(out)
}

struct Compiler<'a> {
    root: &'a Value,
    rules: BTreeMap<String, String>,
    /// `$ref` target -> its rule name (written before the target is compiled: recursion).
    refs: BTreeMap<String, String>,
    next: usize,
}

/// A GBNF string literal for `s`.
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value as the exact JSON text it is generated as.
fn value_literal(v: &Value) -> String {
    literal(&serde_json::to_string(v).expect("a JSON value serializes"))
}

fn count(obj: &Map<String, Value>, kw: &str) -> Result<Option<u64>, SchemaError> {
    match obj.get(kw) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_COUNT => Ok(Some(n)),
            Some(_) => refuse(kw, format!("'{kw}' may be at most {MAX_COUNT}")),
            None => refuse(kw, format!("'{kw}' must be a non-negative integer")),
        },
    }
}

fn matches_type(v: &Value, ty: &str) -> bool {
    match ty {
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        _ => false,
    }
}

impl Compiler<'_> {
    fn rule(&mut self, hint: &str, body: String) -> String {
        self.next += 1;
        let name = format!("{hint}-{}", self.next);
        self.rules.insert(name.clone(), body);
        name
    }

    fn visit(&mut self, schema: &Value, depth: usize) -> Result<String, SchemaError> {
        if depth > MAX_DEPTH {
            return refuse("", format!("schemas nested deeper than {MAX_DEPTH} levels"));
        }
        let obj = match schema {
            Value::Bool(true) => return Ok("json-value".into()),
            Value::Bool(false) => {
                return refuse("false", "the schema 'false' has no instances");
            }
            Value::Object(o) => o,
            _ => return refuse("", "a schema must be an object or a boolean"),
        };
        const KNOWN: &[&str] = &[
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
            "enum",
            "const",
            "anyOf",
            "allOf",
            "$ref",
        ];
        if let Some(k) = obj
            .keys()
            .find(|k| !KNOWN.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()))
        {
            return refuse(k, format!("the JSON Schema keyword '{k}' is not supported"));
        }
        if let Some(r) = obj.get("$ref") {
            if let Some(k) = obj
                .keys()
                .find(|k| k.as_str() != "$ref" && !ANNOTATIONS.contains(&k.as_str()))
            {
                return refuse(
                    k,
                    format!("'{k}' beside '$ref' is not supported (wrap them in allOf)"),
                );
            }
            return self.reference(r, depth);
        }
        if let Some(v) = obj.get("const") {
            return self.restricted(obj, std::slice::from_ref(v), "const");
        }
        if let Some(e) = obj.get("enum") {
            let Value::Array(values) = e else {
                return refuse("enum", "'enum' must be an array");
            };
            return self.restricted(obj, values, "enum");
        }
        if let Some(all) = obj.get("allOf") {
            match all {
                Value::Array(items) if items.len() == 1 && obj.len() == 1 => {
                    return self.visit(&items[0], depth + 1);
                }
                _ => {
                    return refuse(
                        "allOf",
                        "only 'allOf' with one schema and nothing beside it is supported",
                    );
                }
            }
        }
        if let Some(any) = obj.get("anyOf") {
            let Value::Array(items) = any else {
                return refuse("anyOf", "'anyOf' must be a non-empty array");
            };
            if items.is_empty() {
                return refuse("anyOf", "'anyOf' must be a non-empty array");
            }
            if let Some(k) = obj
                .keys()
                .find(|k| k.as_str() != "anyOf" && !ANNOTATIONS.contains(&k.as_str()))
            {
                return refuse(k, format!("'{k}' beside 'anyOf' is not supported"));
            }
            let alts = items
                .iter()
                .map(|s| self.visit(s, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(self.rule("any-of", alts.join(" | ")));
        }
        let types: Vec<&str> = match obj.get("type") {
            None => {
                if obj.contains_key("properties") || obj.contains_key("additionalProperties") {
                    vec!["object"]
                } else if obj.contains_key("items")
                    || obj.contains_key("minItems")
                    || obj.contains_key("maxItems")
                {
                    vec!["array"]
                } else if obj.contains_key("minLength") || obj.contains_key("maxLength") {
                    vec!["string"]
                } else {
                    return Ok("json-value".into());
                }
            }
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() => ts
                .iter()
                .map(|t| t.as_str().ok_or(()))
                .collect::<Result<_, _>>()
                .or_else(|_| refuse("type", "'type' must be a string or an array of strings"))?,
            Some(_) => return refuse("type", "'type' must be a string or an array of strings"),
        };
        let mut alts = Vec::with_capacity(types.len());
        for t in types {
            alts.push(match t {
                "string" => self.string(obj)?,
                "number" => "json-number".into(),
                "integer" => "json-integer".into(),
                "boolean" => "( \"true\" | \"false\" )".into(),
                "null" => "\"null\"".into(),
                "object" => self.object(obj, depth)?,
                "array" => self.array(obj, depth)?,
                other => return refuse("type", format!("unknown type '{other}'")),
            });
        }
        Ok(if alts.len() == 1 {
            alts.pop().expect("one")
        } else {
            self.rule("types", alts.join(" | "))
        })
    }

    /// `enum` / `const`: the values themselves, as far as the rest of the schema's `type`
    /// allows them.
    fn restricted(
        &mut self,
        obj: &Map<String, Value>,
        values: &[Value],
        kw: &str,
    ) -> Result<String, SchemaError> {
        if let Some(k) = obj.keys().find(|k| {
            !matches!(k.as_str(), "type" | "enum" | "const") && !ANNOTATIONS.contains(&k.as_str())
        }) {
            return refuse(k, format!("'{k}' beside '{kw}' is not supported"));
        }
        let types: Vec<&str> = match obj.get("type") {
            None => Vec::new(),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            Some(_) => return refuse("type", "'type' must be a string or an array of strings"),
        };
        let alts: Vec<String> = values
            .iter()
            .filter(|v| types.is_empty() || types.iter().any(|t| matches_type(v, t)))
            .map(value_literal)
            .collect();
        if alts.is_empty() {
            return refuse(kw, format!("no value of '{kw}' matches the schema's type"));
        }
        Ok(self.rule(kw, alts.join(" | ")))
    }

    fn reference(&mut self, r: &Value, depth: usize) -> Result<String, SchemaError> {
        let Some(path) = r.as_str() else {
            return refuse("$ref", "'$ref' must be a string");
        };
        if let Some(name) = self.refs.get(path) {
            return Ok(name.clone());
        }
        let target = if path == "#" {
            Some(self.root)
        } else if let Some(p) = path.strip_prefix('#') {
            self.root.pointer(p)
        } else {
            None
        };
        let Some(target) = target else {
            return refuse(
                "$ref",
                format!("'$ref' must point inside this schema ('#/$defs/...'); got '{path}'"),
            );
        };
        self.next += 1;
        let name = format!("ref-{}", self.next);
        self.refs.insert(path.to_owned(), name.clone());
        let body = self.visit(target, depth + 1)?;
        self.rules.insert(name.clone(), body);
        Ok(name)
    }

    fn string(&mut self, obj: &Map<String, Value>) -> Result<String, SchemaError> {
        let min = count(obj, "minLength")?;
        let max = count(obj, "maxLength")?;
        Ok(match (min, max) {
            (None | Some(0), None) => "json-string".into(),
            (min, max) => {
                let min = min.unwrap_or(0);
                if max.is_some_and(|m| m < min) {
                    return refuse("maxLength", "'maxLength' is below 'minLength'");
                }
                let max = max.map_or(String::new(), |m| m.to_string());
                self.rule(
                    "string",
                    format!("\"\\\"\" json-char{{{min},{max}}} \"\\\"\""),
                )
            }
        })
    }

    fn array(&mut self, obj: &Map<String, Value>, depth: usize) -> Result<String, SchemaError> {
        let item = match obj.get("items") {
            None => "json-value".into(),
            Some(s) => self.visit(s, depth + 1)?,
        };
        let min = count(obj, "minItems")?.unwrap_or(0);
        let max = count(obj, "maxItems")?;
        if max.is_some_and(|m| m < min) {
            return refuse("maxItems", "'maxItems' is below 'minItems'");
        }
        let body = match max {
            Some(0) => "\"[\" ws \"]\"".to_owned(),
            _ => {
                let more_max = max.map_or(String::new(), |m| (m - 1).to_string());
                let list = format!(
                    "{item} ws ( \",\" ws {item} ws ){{{},{more_max}}}",
                    min.saturating_sub(1)
                );
                if min == 0 {
                    format!("\"[\" ws ( {list} )? \"]\"")
                } else {
                    format!("\"[\" ws {list} \"]\"")
                }
            }
        };
        Ok(self.rule("array", body))
    }

    fn object(&mut self, obj: &Map<String, Value>, depth: usize) -> Result<String, SchemaError> {
        let empty = Map::new();
        let props = match obj.get("properties") {
            None => &empty,
            Some(Value::Object(p)) => p,
            Some(_) => return refuse("properties", "'properties' must be an object"),
        };
        let required: Vec<&str> = match obj.get("required") {
            None => Vec::new(),
            Some(Value::Array(r)) => r
                .iter()
                .map(|v| v.as_str().ok_or(()))
                .collect::<Result<_, _>>()
                .or_else(|_| refuse("required", "'required' must be an array of strings"))?,
            Some(_) => return refuse("required", "'required' must be an array of strings"),
        };
        if let Some(missing) = required.iter().find(|r| !props.contains_key(**r)) {
            return refuse(
                "required",
                format!("required property '{missing}' is not in 'properties'"),
            );
        }
        if props.is_empty() {
            // A map: any keys, values of `additionalProperties` (any value when absent).
            let value = match obj.get("additionalProperties") {
                None | Some(Value::Bool(true)) => "json-value".into(),
                Some(Value::Bool(false)) => return Ok(self.rule("object", "\"{\" ws \"}\"".into())),
                Some(s) => self.visit(s, depth + 1)?,
            };
            let kv = format!("json-string ws \":\" ws {value} ws");
            return Ok(self.rule(
                "object",
                format!("\"{{\" ws ( {kv} ( \",\" ws {kv} )* )? \"}}\""),
            ));
        }
        // Only the listed properties are generated (a valid instance whatever
        // `additionalProperties` says), in order; optional ones may be skipped.
        let mut kvs = Vec::with_capacity(props.len());
        for (name, schema) in props {
            let value = self.visit(schema, depth + 1)?;
            let key = literal(&serde_json::to_string(name).expect("a string serializes"));
            kvs.push((
                format!("{key} ws \":\" ws {value} ws"),
                required.contains(&name.as_str()),
            ));
        }
        // rest(i, first): the properties from i on, `first` when none was written yet.
        let mut rest_first: Option<String> = None; // rest(i+1, true)
        let mut rest_more: Option<String> = None; // rest(i+1, false)
        for (kv, req) in kvs.iter().rev() {
            let tail = |r: &Option<String>| r.as_ref().map_or(String::new(), |n| format!(" {n}"));
            let with_first = format!("{kv}{}", tail(&rest_more));
            let with_more = format!("\",\" ws {kv}{}", tail(&rest_more));
            let (first, more) = if *req {
                (with_first, with_more)
            } else {
                let skip_first = rest_first.clone().unwrap_or_default();
                let skip_more = rest_more.clone().unwrap_or_default();
                (
                    format!("{with_first} | {}", or_empty(&skip_first)),
                    format!("{with_more} | {}", or_empty(&skip_more)),
                )
            };
            rest_first = Some(self.rule("props", first));
            rest_more = Some(self.rule("props", more));
        }
        let body = rest_first.expect("at least one property");
        Ok(self.rule("object", format!("\"{{\" ws {body} \"}}\"")))
    }
}

/// An alternative that may be empty, written so that GBNF reads it as one.
fn or_empty(s: &str) -> String {
    if s.is_empty() {
        "( )".into()
    } else {
        s.to_owned()
    }
}
