//! Model URIs: which backend serves a URI, and how a URI is shown without secrets.

use crate::StoreError;
use std::path::PathBuf;

/// Where a model comes from, after parsing its URI. `Debug` redacts the URLs (a SAS or a
/// signed URL may be in them).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum SourceSpec {
    /// A local file (a mounted volume): used in place.
    Local(PathBuf),
    /// Plain HTTP(S) with Range support. `hf` marks a Hugging Face shorthand (HF_TOKEN applies).
    Http { url: String, hf: bool },
    /// Amazon S3 or an S3-compatible server.
    S3 { bucket: String, key: String },
    /// Azure Blob Storage. `url` is the full blob URL (it may carry a SAS query) or `None` when
    /// the endpoint is to come from a connection string or the default public cloud.
    Azure {
        account: String,
        container: String,
        blob: String,
        url: Option<String>,
    },
}

impl std::fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Local(p) => f.debug_tuple("Local").field(p).finish(),
            SourceSpec::Http { url, hf } => f
                .debug_struct("Http")
                .field("url", &redact(url))
                .field("hf", hf)
                .finish(),
            SourceSpec::S3 { bucket, key } => f
                .debug_struct("S3")
                .field("bucket", bucket)
                .field("key", key)
                .finish(),
            SourceSpec::Azure {
                account,
                container,
                blob,
                url,
            } => f
                .debug_struct("Azure")
                .field("account", account)
                .field("container", container)
                .field("blob", blob)
                .field("url", &url.as_deref().map(redact))
                .finish(),
        }
    }
}

/// Suffixes of Azure Blob endpoints in the public and sovereign clouds.
const AZURE_BLOB_HOST_SUFFIXES: &[&str] = &[
    ".blob.core.windows.net",
    ".blob.core.chinacloudapi.cn",
    ".blob.core.usgovcloudapi.net",
];

pub(crate) fn parse(uri: &str) -> Result<SourceSpec, StoreError> {
    let bad = |reason: &str| StoreError::InvalidUri {
        uri: redact(uri),
        reason: reason.to_string(),
    };
    let uri = uri.trim();
    if uri.is_empty() {
        return Err(bad("empty"));
    }
    if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(bad("file:// URIs need an absolute path (file:///path)"));
        }
        return Ok(SourceSpec::Local(PathBuf::from(percent_decode(rest))));
    }
    if let Some(rest) = uri.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected s3://bucket/key"))?;
        if bucket.is_empty() || key.is_empty() {
            return Err(bad("expected s3://bucket/key"));
        }
        return Ok(SourceSpec::S3 {
            bucket: bucket.into(),
            key: key.into(),
        });
    }
    if let Some(rest) = uri.strip_prefix("az://") {
        let mut it = rest.splitn(3, '/');
        let (Some(account), Some(container), Some(blob)) = (it.next(), it.next(), it.next()) else {
            return Err(bad("expected az://account/container/blob"));
        };
        if account.is_empty() || container.is_empty() || blob.is_empty() {
            return Err(bad("expected az://account/container/blob"));
        }
        return Ok(SourceSpec::Azure {
            account: account.into(),
            container: container.into(),
            blob: blob.into(),
            url: None,
        });
    }
    if let Some(rest) = uri.strip_prefix("hf://") {
        // hf://org/repo/path/to/file[@revision is not supported; use ?revision=REV]
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut it = path.splitn(3, '/');
        let (Some(org), Some(repo), Some(file)) = (it.next(), it.next(), it.next()) else {
            return Err(bad("expected hf://org/repo/file"));
        };
        if org.is_empty() || repo.is_empty() || file.is_empty() {
            return Err(bad("expected hf://org/repo/file"));
        }
        let revision = query
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("revision=")))
            .unwrap_or("main");
        return Ok(SourceSpec::Http {
            url: format!("https://huggingface.co/{org}/{repo}/resolve/{revision}/{file}"),
            hf: true,
        });
    }
    // Explicit Azure Blob over any endpoint (Azurite, private endpoints):
    // azblob+http://host:port/account/container/blob?SAS
    for (prefix, scheme) in [("azblob+https://", "https"), ("azblob+http://", "http")] {
        if let Some(rest) = uri.strip_prefix(prefix) {
            let url = format!("{scheme}://{rest}");
            let parsed = url::Url::parse(&url).map_err(|e| bad(&e.to_string()))?;
            let segs: Vec<&str> = parsed
                .path()
                .trim_start_matches('/')
                .splitn(3, '/')
                .collect();
            if segs.len() != 3 || segs.iter().any(|s| s.is_empty()) {
                return Err(bad("expected azblob+http(s)://host/account/container/blob"));
            }
            return Ok(SourceSpec::Azure {
                account: segs[0].into(),
                container: segs[1].into(),
                blob: segs[2].into(),
                url: Some(url),
            });
        }
    }
    if uri.starts_with("https://") || uri.starts_with("http://") {
        let parsed = url::Url::parse(uri).map_err(|e| bad(&e.to_string()))?;
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        if let Some(suffix) = AZURE_BLOB_HOST_SUFFIXES.iter().find(|s| host.ends_with(*s)) {
            let account = host.trim_end_matches(suffix).to_string();
            let mut segs = parsed.path().trim_start_matches('/').splitn(2, '/');
            let (Some(container), Some(blob)) = (segs.next(), segs.next()) else {
                return Err(bad(
                    "expected https://ACCOUNT.blob.core.windows.net/container/blob",
                ));
            };
            if container.is_empty() || blob.is_empty() {
                return Err(bad(
                    "expected https://ACCOUNT.blob.core.windows.net/container/blob",
                ));
            }
            return Ok(SourceSpec::Azure {
                account,
                container: container.into(),
                blob: blob.into(),
                url: Some(uri.to_string()),
            });
        }
        let hf = host == "huggingface.co" || host.ends_with(".huggingface.co");
        return Ok(SourceSpec::Http {
            url: uri.to_string(),
            hf,
        });
    }
    if uri.contains("://") {
        return Err(bad(
            "unknown scheme (use s3://, az://, https://, hf://, file:// or a path)",
        ));
    }
    Ok(SourceSpec::Local(PathBuf::from(uri)))
}

/// The URI without anything secret: query strings (SAS tokens, signed URLs) and user-info are
/// dropped. Used in every log line, status value, sidecar and error.
pub fn redact(uri: &str) -> String {
    let mut out = String::with_capacity(uri.len());
    for (i, word) in uri.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&redact_word(word));
    }
    out
}

fn redact_word(word: &str) -> String {
    let Some(scheme_end) = word.find("://") else {
        return word.to_string();
    };
    let (head, rest) = word.split_at(scheme_end + 3);
    // user-info (user:password@host)
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    // Drop the query and fragment; keep what follows the URL in prose ("(url): …").
    let path = match path.find(['?', '#']) {
        Some(q) => {
            let end = path[q..]
                .find([')', '"', '\'', '>', ']'])
                .map_or(path.len(), |e| q + e);
            format!("{}{}", &path[..q], &path[end..])
        }
        None => path.to_string(),
    };
    format!("{head}{authority}{path}")
}

/// What identifies the object for the cache key: the redacted URI (no user-info, query or
/// fragment) plus the query parameters that are not credentials, sorted. So
/// `hf://o/r/f?revision=A` and `?revision=B`, or two Azure `snapshot=`/`versionid=` values,
/// are different entries, while a rotated SAS or a re-signed URL (`sig`, `se`, `X-Amz-*`, …)
/// keeps its entry. A URI without such parameters keeps the identity (and cache file name) it
/// had before queries counted.
pub(crate) fn cache_identity(uri: &str) -> String {
    let uri = uri.trim();
    let base = redact(uri);
    let Some((_, query)) = uri.split_once('?') else {
        return base;
    };
    let query = query.split('#').next().unwrap_or("");
    let mut kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| !k.is_empty() && !is_credential_param(k))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        return base;
    }
    kept.sort();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    format!("{base}?{query}")
}

/// Query parameters that authorise a request rather than select content: Azure SAS fields,
/// AWS SigV2/SigV4 presigned-URL fields, CloudFront and Google signed-URL fields, bare tokens.
fn is_credential_param(name: &str) -> bool {
    const EXACT: &[&str] = &[
        // Azure SAS (service, account and user-delegation)
        "sv",
        "ss",
        "srt",
        "sp",
        "se",
        "st",
        "sip",
        "spr",
        "sig",
        "sr",
        "si",
        "sdd",
        "ses",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "sks",
        "skv",
        "saoid",
        "suoid",
        "scid",
        // AWS SigV2, CloudFront, Google
        "awsaccesskeyid",
        "signature",
        "expires",
        "policy",
        "key-pair-id",
        "googleaccessid",
        // bare tokens
        "token",
        "access_token",
        "code",
    ];
    let name = name.to_ascii_lowercase();
    EXACT.contains(&name.as_str()) || name.starts_with("x-amz-") || name.starts_with("x-goog-")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last path segment of a URI, for naming the cached file.
pub(crate) fn file_name(spec: &SourceSpec) -> String {
    let raw = match spec {
        SourceSpec::Local(p) => p
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        SourceSpec::Http { url, .. } => url
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string(),
        SourceSpec::S3 { key, .. } => key.rsplit('/').next().unwrap_or("").to_string(),
        SourceSpec::Azure { blob, .. } => blob
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string(),
    };
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    let clean = clean.trim_start_matches('.').to_string();
    if clean.is_empty() {
        "model.gguf".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            parse("s3://b/dir/m.gguf").unwrap(),
            SourceSpec::S3 {
                bucket: "b".into(),
                key: "dir/m.gguf".into()
            }
        );
        assert_eq!(
            parse("hf://microsoft/BitNet-b1.58-2B-4T-gguf/ggml-model-i2_s.gguf").unwrap(),
            SourceSpec::Http {
                url: "https://huggingface.co/microsoft/BitNet-b1.58-2B-4T-gguf/resolve/main/ggml-model-i2_s.gguf".into(),
                hf: true
            }
        );
        assert!(matches!(parse("az://acct/c/dir/b.gguf").unwrap(),
            SourceSpec::Azure { account, container, blob, url: None } if account == "acct" && container == "c" && blob == "dir/b.gguf"));
        assert!(
            matches!(parse("https://acct.blob.core.windows.net/c/b.gguf?sv=1&sig=x").unwrap(),
            SourceSpec::Azure { account, url: Some(_), .. } if account == "acct")
        );
        assert!(
            matches!(parse("azblob+http://127.0.0.1:1/devstoreaccount1/c/b.gguf?sig=x").unwrap(),
            SourceSpec::Azure { account, url: Some(u), .. } if account == "devstoreaccount1" && u.starts_with("http://127.0.0.1:1/"))
        );
        assert_eq!(
            parse("/models/m.gguf").unwrap(),
            SourceSpec::Local("/models/m.gguf".into())
        );
        assert_eq!(
            parse("file:///models/a%20b.gguf").unwrap(),
            SourceSpec::Local("/models/a b.gguf".into())
        );
        assert!(matches!(
            parse("https://example.com/m.gguf").unwrap(),
            SourceSpec::Http { hf: false, .. }
        ));
        assert!(parse("s3://bucket").is_err());
        assert!(parse("gopher://x/y").is_err());
    }

    #[test]
    fn redaction_drops_queries_and_userinfo() {
        assert_eq!(
            redact("https://a.blob.core.windows.net/c/b?sv=2020&sig=SECRET"),
            "https://a.blob.core.windows.net/c/b"
        );
        assert_eq!(redact("https://user:pw@host/x"), "https://host/x");
        assert_eq!(
            redact("error for url (http://h/x?sig=S): boom"),
            "error for url (http://h/x): boom"
        );
        assert_eq!(redact("s3://b/k"), "s3://b/k");
    }

    #[test]
    fn cache_identity_keeps_content_selectors_and_drops_credentials() {
        let a = cache_identity("hf://o/r/m.gguf?revision=A");
        let b = cache_identity("hf://o/r/m.gguf?revision=B");
        assert_ne!(a, b);
        assert_eq!(a, "hf://o/r/m.gguf?revision=A");
        // No query, or only credentials: the redacted URI, as before queries counted.
        assert_eq!(cache_identity("s3://b/k.gguf"), "s3://b/k.gguf");
        let sas1 = "https://a.blob.core.windows.net/c/m.gguf?sv=2022&se=2030&sp=r&sig=ONE";
        let sas2 = "https://a.blob.core.windows.net/c/m.gguf?sig=TWO&sv=2023&se=2031&sp=r";
        assert_eq!(
            cache_identity(sas1),
            "https://a.blob.core.windows.net/c/m.gguf"
        );
        assert_eq!(cache_identity(sas1), cache_identity(sas2));
        // A snapshot selects content; order does not matter; credentials never appear.
        let s1 = cache_identity("https://h/m.gguf?snapshot=2024&sig=X&X-Amz-Signature=Y");
        let s2 = cache_identity("https://h/m.gguf?X-Amz-Credential=Z&snapshot=2024");
        assert_eq!(s1, s2);
        assert_eq!(s1, "https://h/m.gguf?snapshot=2024");
        assert_ne!(s1, cache_identity("https://h/m.gguf?snapshot=2025"));
        assert_eq!(
            cache_identity("https://h/m.gguf?b=2&a=1#frag"),
            cache_identity("https://h/m.gguf?a=1&b=2")
        );
    }

    #[test]
    fn spec_debug_is_redacted() {
        let spec = parse("https://acct.blob.core.windows.net/c/b.gguf?sv=1&sig=SECRET").unwrap();
        let shown = format!("{spec:?}");
        assert!(
            !shown.contains("SECRET") && shown.contains("b.gguf"),
            "{shown}"
        );
        let spec = parse("https://u:PASSWORD@h/m.gguf?token=SECRET").unwrap();
        let shown = format!("{spec:?}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("PASSWORD"),
            "{shown}"
        );
    }

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_name(&parse("s3://b/x/m.gguf").unwrap()), "m.gguf");
        assert_eq!(file_name(&parse("https://h/a/..%2f?x=1").unwrap()), "_2f");
        assert_eq!(file_name(&parse("https://h/").unwrap()), "model.gguf");
    }
}
