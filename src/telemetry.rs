//! Logging: `tracing` with a pretty or JSON formatter on stderr (stdout is for command output such as
//! `tenants list --json`). The filter is `RUST_LOG` if set, else `log.level`. `log` records (refinery) are
//! bridged by tracing-subscriber.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. Returns false if one was already installed (tests install once).
pub fn init(settings: &LogSettings) -> bool {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match settings.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    result.is_ok()
}
