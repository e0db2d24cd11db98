//! Logging setup (tracing). Text for development, JSON for production.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `RUST_LOG` overrides the default filter (`info`).
/// tungstenite's and sqlx's TRACE output can contain frames and URLs, so the default keeps them
/// at `info` or above.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,tungstenite=info,tokio_tungstenite=info,sqlx=warn")
    });
    // Colour only on a terminal: a file or a pipe gets plain text.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
