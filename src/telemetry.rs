//! Logging: the global tracing subscriber, text for people or JSON lines for collectors.

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A log filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("log filter {filter:?}: {reason}")]
pub struct LogFilterError {
    pub filter: String,
    pub reason: String,
}

/// Sets up the global tracing subscriber: `filter` in RUST_LOG syntax, text or JSON lines.
pub fn init_tracing(format: LogFormat, filter: &str) -> Result<(), LogFilterError> {
    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| LogFilterError {
            filter: filter.to_string(),
            reason: e.to_string(),
        })?;
    // Colour codes only on a terminal: in a file or a log collector they are noise.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(std::io::stdout().is_terminal());
    // A subscriber set earlier (e.g. by a test) stays; that is not an error.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
