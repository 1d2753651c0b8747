//! The real `capyknock server` process inside a namespace, as a guard: started with a config,
//! its stdout and stderr appended to a log file, waited on until it answers, and stopped on drop
//! (SIGTERM, then SIGKILL if it lingers).

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{Error, Result, netns::NetNs, wait::wait_until};

/// How long [`Daemon::stop`] (and drop) waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long [`Daemon::wait_status_ready`] waits for the first answer.
pub const READY_WITHIN: Duration = Duration::from_secs(20);

/// How to start the daemon.
#[derive(Debug, Clone, Copy)]
pub struct DaemonOptions<'a> {
    /// The `capyknock` binary.
    pub bin: &'a Path,
    /// Its `--config`.
    pub config: &'a Path,
    /// Where stdout and stderr go (appended: a restarted daemon continues the same file).
    pub log: &'a Path,
    /// More arguments after `server --config CONFIG`.
    pub args: &'a [&'a str],
    /// A program (and its arguments) the daemon is started through inside the namespace, such
    /// as `setpriv` with a reduced capability set; it must exec the daemon in place.
    pub wrapper: &'a [String],
    /// `RUST_LOG` for the daemon (`None`: inherited).
    pub rust_log: Option<&'a str>,
    /// Start it in a process group of its own, so Ctrl-C at the terminal reaches only the task,
    /// which then stops it in order (xtask). Tests leave it in theirs, so that killing the test
    /// run kills the daemon too.
    pub own_process_group: bool,
}

/// A running `capyknock server`.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    log_start: u64,
}

impl Daemon {
    /// Starts `BIN [WRAPPER] server --config CONFIG ARGS...` in `ns` (through `nsenter --net`,
    /// which keeps the host's bpffs and execs in place, so the child's pid is the daemon's).
    pub fn start(ns: &NetNs, opts: &DaemonOptions<'_>) -> Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(opts.log)
            .map_err(|e| Error::io(format!("cannot open {}", opts.log.display()), e))?;
        let log_start = log_file.metadata().map_or(0, |m| m.len());
        let stderr = log_file
            .try_clone()
            .map_err(|e| Error::io("cannot duplicate the log file", e))?;
        let mut cmd = match opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = ns.command(program);
                cmd.args(args).arg(opts.bin);
                cmd
            }
            None => ns.command(opts.bin),
        };
        cmd.arg("server")
            .arg("--config")
            .arg(opts.config)
            .args(opts.args)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr);
        if let Some(level) = opts.rust_log {
            cmd.env("RUST_LOG", level);
        }
        if opts.own_process_group {
            cmd.process_group(0);
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            command: crate::process::describe(&cmd),
            source,
        })?;
        Ok(Self {
            child: Some(child),
            log: opts.log.to_owned(),
            log_start,
        })
    }

    /// The daemon's pid, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file.
    #[must_use]
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Where this run's part of the log file starts.
    #[must_use]
    pub fn log_start(&self) -> u64 {
        self.log_start
    }

    /// What this run has logged so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        read_log_from(&self.log, self.log_start)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits up to `within` until `ready` says the daemon answers; fails at once if it exits.
    pub fn wait_ready(&mut self, within: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let answered = wait_until(within, Duration::from_millis(100), || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(Error::DaemonExited {
                    status,
                    log: read_log_from(&self.log, self.log_start),
                });
            }
            Ok(ready())
        })?;
        if !answered {
            return Err(Error::Timeout(format!(
                "capyknock server did not become ready in {} s:\n{}",
                within.as_secs(),
                self.log_text()
            )));
        }
        Ok(())
    }

    /// Waits until `BIN status --socket SOCKET` answers (at most [`READY_WITHIN`]).
    pub fn wait_status_ready(&mut self, bin: &Path, socket: &Path) -> Result<()> {
        self.wait_ready(READY_WITHIN, || {
            Command::new(bin)
                .arg("status")
                .arg("--socket")
                .arg(socket)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| Error::Other("the daemon is not running".into()))?;
        let pid = i32::try_from(child.id())
            .map_err(|_| Error::Other(format!("pid {} out of range", child.id())))?;
        kill(Pid::from_raw(pid), signal).map_err(|e| Error::io(format!("kill -{signal}"), e))
    }

    /// SIGTERM, then waits up to `grace` for the exit; SIGKILL and [`Error::Timeout`] if the
    /// daemon is still there then.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit(grace)
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(STOP_GRACE)
    }

    /// Stops the daemon if it runs: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    pub fn stop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate(STOP_GRACE);
        }
    }

    /// Waits up to `within` for the exit, then kills.
    fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::Other("the daemon is not running".into()));
        };
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout(format!(
                    "the daemon did not exit in {} s:\n{}",
                    within.as_secs(),
                    self.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The text of `log` from byte `start` on (empty if there is none).
#[must_use]
pub fn read_log_from(log: &Path, start: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(log)
        && f.seek(SeekFrom::Start(start)).is_ok()
    {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_from_an_offset() {
        let dir = crate::files::TempDir::for_process("testkit-daemon-test-").unwrap();
        let log = dir.file("log");
        std::fs::write(&log, "first run\nsecond run\n").unwrap();
        assert_eq!(read_log_from(&log, 10), "second run\n");
        assert_eq!(read_log_from(&log, 100), "");
        assert_eq!(read_log_from(&dir.file("missing"), 0), "");
    }
}
