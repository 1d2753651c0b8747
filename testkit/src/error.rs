//! The one error type of the kit. Tests turn it into a panic (`.unwrap()` prints the message and
//! its causes, see the `Debug` impl), xtask into an `anyhow::Error` with `?`.

use std::{fmt, io, process::ExitStatus};

/// What went wrong while building or using a lab.
#[derive(thiserror::Error)]
pub enum Error {
    /// A program could not be started.
    #[error("cannot start {command}")]
    Spawn {
        /// The command line.
        command: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A program exited unsuccessfully.
    #[error("{command} failed ({status}):\n{output}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// Its stdout and stderr.
        output: String,
    },
    /// A system call or file operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Something did not happen in time.
    #[error("{0}")]
    Timeout(String),
    /// The daemon exited while it should be running.
    #[error("capyknock server exited ({status}):\n{log}")]
    DaemonExited {
        /// How it ended.
        status: ExitStatus,
        /// Its log so far.
        log: String,
    },
    /// Ctrl-C (or SIGTERM) arrived; see [`crate::wait`].
    #[error("interrupted: cleaning up")]
    Interrupted,
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An [`Error::Io`] saying `what` was being done.
    pub fn io(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Self::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// The message and every cause, so that `.unwrap()` in a test reads like xtask's error output.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            write!(f, "\nCaused by: {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// The kit's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_causes() {
        let e = Error::io("cannot open /x", io::Error::other("no such file"));
        assert_eq!(format!("{e:?}"), "cannot open /x\nCaused by: no such file");
        assert_eq!(e.to_string(), "cannot open /x");
    }
}
