//! The process's tracing subscriber, for both the client and the daemon: to stderr, level from
//! `RUST_LOG` (default `info`), colours only on a terminal, and no timestamp under systemd
//! (journald adds its own).

/// Sets up tracing for the process; call once, first thing in `main`.
pub fn init() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
