//! Structured logs: JSON lines on stderr (`BITNET_LOG_FORMAT=text` for humans), filtered by
//! `RUST_LOG` (default `info`). Each request's lines carry its `request_id` from the span.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let text = std::env::var("BITNET_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("text"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if text {
        builder.with_ansi(false).try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    };
}
