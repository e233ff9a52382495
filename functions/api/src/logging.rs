//! Structured logs: JSON lines on stderr, or text lines when stderr is a terminal (a person
//! running `bitnet serve`); `BITNET_LOG_FORMAT=json|text` decides instead. Filtered by
//! `RUST_LOG` (default `info`). Each request's lines carry its `request_id` from the span.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let text = match std::env::var("BITNET_LOG_FORMAT") {
        Ok(v) if v.eq_ignore_ascii_case("text") => true,
        Ok(v) if v.eq_ignore_ascii_case("json") => false,
        _ => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
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
