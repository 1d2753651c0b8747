//! The process's tracing subscriber, for both the client and the daemon: to stderr, level from
//! `RUST_LOG` (default `info`), colours only on a terminal and never with `NO_COLOR` set.
//!
//! Under systemd (stderr is the journal stream named by `JOURNAL_STREAM`) each line starts with
//! its syslog priority, `<3>` for errors to `<7>` for trace (the `SyslogLevelPrefix=` protocol of
//! sd-daemon(3)), and carries no timestamp of its own: `journalctl -p warning` then shows refused
//! knocks and refused reloads. The fields stay in the line as `key=value`, where journald keeps
//! them in `MESSAGE`. A native journald layer (tracing-journald) would move them into journal
//! fields of their own and leave `MESSAGE` as the bare text (`knock rejected`), which fail2ban's
//! `systemd-journal` backend, matching on `MESSAGE`, could no longer tie to an address.

use std::{ffi::OsStr, fmt};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Sets up tracing for the process; call once, first thing in `main`.
pub fn init() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if stderr_is_journal() {
        builder
            .with_ansi(false)
            .event_format(PriorityPrefix(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .init();
    } else {
        let ansi = colours_on(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
        builder.with_ansi(ansi).init();
    }
}

/// Sets up tracing to `writer` (a log file) instead of stderr: same lines, no colours. For the
/// Windows service, which has no console.
pub fn init_with_writer<W>(writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter)
        .with_ansi(false)
        .init();
}

/// Whether to colour output to a stream: only a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string (<https://no-color.org>).
#[must_use]
pub fn colours_on(stream_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stream_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Whether stderr is the journal: `JOURNAL_STREAM` (`DEVICE:INODE`, set by systemd) names the
/// very file stderr is, not merely one a parent process had.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // journald is Linux-only; there dev_t and ino_t are u64.
    #[cfg(target_os = "linux")]
    {
        let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
            return false;
        };
        journal_stream_matches(&value, stat.st_dev, stat.st_ino)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = value;
        false
    }
}

/// Whether `JOURNAL_STREAM`'s `DEVICE:INODE` is `dev`/`ino`.
#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "journald is Linux-only")
)]
fn journal_stream_matches(value: &OsStr, dev: u64, ino: u64) -> bool {
    let parsed = value.to_str().and_then(|v| {
        let (d, i) = v.split_once(':')?;
        Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?))
    });
    parsed == Some((dev, ino))
}

/// The syslog priority journald reads from a `<N>` line prefix.
const fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// An event format that starts each line with `<N>`, the event's syslog priority.
struct PriorityPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for PriorityPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn no_color_turns_colours_off() {
        assert!(colours_on(true, None));
        assert!(colours_on(true, Some(OsStr::new(""))));
        assert!(!colours_on(true, Some(OsStr::new("1"))));
        assert!(!colours_on(false, None));
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(journal_stream_matches(OsStr::new("8:1234"), 8, 1234));
        assert!(!journal_stream_matches(OsStr::new("8:1234"), 8, 1235));
        assert!(!journal_stream_matches(OsStr::new("junk"), 8, 1234));
        assert!(!journal_stream_matches(OsStr::new(""), 0, 0));
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_start_with_their_priority_and_keep_their_fields() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(PriorityPrefix(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(reason = "bad_totp", src = "192.0.2.1", "knock rejected");
            tracing::error!("reload refused");
            tracing::info!("ready");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("<4> WARN"), "{text}");
        assert!(
            lines[0].contains("knock rejected reason=\"bad_totp\" src=\"192.0.2.1\""),
            "{text}"
        );
        assert!(lines[1].starts_with("<3>ERROR"), "{text}");
        assert!(lines[2].starts_with("<6> INFO"), "{text}");
    }
}
