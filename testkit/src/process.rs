//! Running programs: always with argv (never a shell), output captured, no controlling terminal
//! (so nothing can stop to prompt), failures reported with the command line and what it printed.

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    process::{Command, Output, Stdio},
};

use crate::{Error, Result, wait::check_interrupted};

/// `program arg arg ...`, for messages.
#[must_use]
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// stdout and then stderr of `out`, as text.
#[must_use]
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` with `input` on stdin and returns its output whatever its exit status. The child
/// runs in a session of its own (`setsid`), with no controlling terminal, so a program that would
/// prompt on the terminal fails instead of waiting (and Ctrl-C reaches only us, who then stop).
/// Fails when it cannot run, and when Ctrl-C arrived meanwhile.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<Output> {
    detach_from_terminal(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: describe(cmd),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that exits without reading its input is judged by its exit status.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for {}", describe(cmd)), e))?;
    check_interrupted()?;
    Ok(out)
}

/// Runs `cmd` (empty stdin, no terminal); its output, or [`Error::Failed`] with everything it
/// printed when it exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = run_with_stdin(cmd, "")?;
    if !out.status.success() {
        return Err(Error::Failed {
            command: describe(cmd),
            status: out.status,
            output: output_text(&out),
        });
    }
    Ok(out)
}

/// Makes the child call `setsid()` before it execs.
#[expect(
    unsafe_code,
    reason = "pre_exec is the only way to run code in the forked child"
)]
fn detach_from_terminal(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls are
    // allowed; it makes one, setsid(2), and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_and_failures() {
        let out = run(Command::new("echo").args(["a", "b"])).unwrap();
        assert_eq!(output_text(&out), "a b\n");
        let err = run(Command::new("ls").arg("/nonexistent-testkit-path")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("ls /nonexistent-testkit-path failed"),
            "{text}"
        );
        assert!(text.contains("nonexistent-testkit-path"), "{text}");
        assert!(matches!(
            run(&mut Command::new("/nonexistent/program")),
            Err(Error::Spawn { .. })
        ));
    }

    #[test]
    fn stdin_and_no_terminal() {
        let out = run_with_stdin(&mut Command::new("cat"), "hello\n").unwrap();
        assert_eq!(out.stdout, b"hello\n");
        // A session of its own: the session id (field 6 of /proc/PID/stat) is its own pid.
        let out = run(Command::new("cat").arg("/proc/self/stat")).unwrap();
        let stat = String::from_utf8_lossy(&out.stdout).into_owned();
        let pid = stat.split_whitespace().next().unwrap();
        let (_, rest) = stat.rsplit_once(')').unwrap();
        let session = rest.split_whitespace().nth(3).unwrap();
        assert_eq!(session, pid, "{stat}");
    }
}
