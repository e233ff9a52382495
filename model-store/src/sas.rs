//! Azure Storage connection strings and account SAS tokens made from an account key.
//!
//! The official `azure_storage_blob` 1.x SDK authenticates with Entra ID tokens or with a SAS
//! in the URL; it has no shared-key signing. A connection string that carries an account key is
//! therefore turned into a short-lived, read-only account SAS here (HMAC-SHA256 over the
//! documented string-to-sign of service version 2018-11-09), and the blob URL carries it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The parts of a connection string that matter for reading a blob.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    pub account_name: Option<String>,
    pub account_key: Option<String>,
    pub sas: Option<String>,
    /// `BlobEndpoint`, or built from protocol, account and `EndpointSuffix`.
    pub blob_endpoint: Option<String>,
}

impl std::fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionString")
            .field("account_name", &self.account_name)
            .field("blob_endpoint", &self.blob_endpoint)
            .finish_non_exhaustive()
    }
}

impl ConnectionString {
    /// Parses `Key=Value;…` (keys are case-insensitive; values may contain `=`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut protocol = "https".to_string();
        let mut suffix = "core.windows.net".to_string();
        let mut out = ConnectionString {
            account_name: None,
            account_key: None,
            sas: None,
            blob_endpoint: None,
        };
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err("connection string: expected Key=Value pairs separated by ';'".into());
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "defaultendpointsprotocol" => protocol = v.to_string(),
                "accountname" => out.account_name = Some(v.to_string()),
                "accountkey" => out.account_key = Some(v.to_string()),
                "sharedaccesssignature" => out.sas = Some(v.trim_start_matches('?').to_string()),
                "blobendpoint" => out.blob_endpoint = Some(v.trim_end_matches('/').to_string()),
                "endpointsuffix" => suffix = v.to_string(),
                "usedevelopmentstorage" if v.eq_ignore_ascii_case("true") => {
                    out.account_name = Some(DEV_ACCOUNT.into());
                    out.account_key = Some(DEV_KEY.into());
                    out.blob_endpoint = Some(format!("http://127.0.0.1:10000/{DEV_ACCOUNT}"));
                }
                _ => {}
            }
        }
        if out.blob_endpoint.is_none()
            && let Some(account) = &out.account_name
        {
            out.blob_endpoint = Some(format!("{protocol}://{account}.blob.{suffix}"));
        }
        if out.account_key.is_none() && out.sas.is_none() {
            return Err(
                "connection string has neither AccountKey nor SharedAccessSignature".into(),
            );
        }
        Ok(out)
    }
}

/// Azurite's well-known development account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development key (public, documented by Microsoft).
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Builds an account SAS query string (without the leading `?`) for the blob service.
/// `permissions` as in the REST docs (`r` read, `w` write, `c` create, `l` list, …),
/// `resource_types` a combination of `s` service, `c` container, `o` object.
pub fn account_sas(
    account: &str,
    key_b64: &str,
    permissions: &str,
    resource_types: &str,
    valid_for: Duration,
) -> Result<String, String> {
    const VERSION: &str = "2018-11-09";
    let key = B64
        .decode(key_b64.trim())
        .map_err(|_| "AccountKey is not valid base64".to_string())?;
    let expiry = iso8601(SystemTime::now() + valid_for);
    let start = iso8601(SystemTime::now() - Duration::from_secs(300));
    let string_to_sign = format!(
        "{account}\n{permissions}\nb\n{resource_types}\n{start}\n{expiry}\n\n\n{VERSION}\n"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(string_to_sign.as_bytes());
    let sig = B64.encode(mac.finalize().into_bytes());
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    Ok(format!(
        "sv={VERSION}&ss=b&srt={}&sp={}&st={}&se={}&sig={}",
        enc(resource_types),
        enc(permissions),
        enc(&start),
        enc(&expiry),
        enc(&sig)
    ))
}

/// `YYYY-MM-DDTHH:MM:SSZ` in UTC.
fn iso8601(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            iso8601(UNIX_EPOCH + Duration::from_secs(1_767_225_599)),
            "2025-12-31T23:59:59Z"
        );
    }

    #[test]
    fn connection_strings() {
        let cs = ConnectionString::parse("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1/;").unwrap();
        assert_eq!(
            cs.blob_endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        assert_eq!(cs.account_key.as_deref(), Some("a2V5"));
        let cs = ConnectionString::parse("AccountName=acct;SharedAccessSignature=?sv=1&sig=abc==")
            .unwrap();
        assert_eq!(
            cs.blob_endpoint.as_deref(),
            Some("https://acct.blob.core.windows.net")
        );
        assert_eq!(cs.sas.as_deref(), Some("sv=1&sig=abc=="));
        assert!(!format!("{cs:?}").contains("sig"));
        assert!(ConnectionString::parse("AccountName=x").is_err());
    }

    #[test]
    fn sas_has_the_fields() {
        let q = account_sas(DEV_ACCOUNT, DEV_KEY, "r", "o", Duration::from_secs(60)).unwrap();
        for k in ["sv=2018-11-09", "ss=b", "srt=o", "sp=r", "se=", "sig="] {
            assert!(q.contains(k), "{q}");
        }
    }
}
