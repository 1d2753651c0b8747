//! Throwaway network topologies for the demo and the load benchmark: named network namespaces
//! joined by veth pairs, a TCP service standing in for sshd, the real `capyknock server` started
//! inside a namespace, and the Ctrl-C handling that lets all of it unwind through `Drop`.
//!
//! Every guard here cleans up when dropped: [`NetNs`] deletes its namespace, [`TempDir`] its
//! files, [`TcpService`] stops its thread, [`Daemon`] stops the daemon (SIGTERM, then SIGKILL).
//! SIGINT/SIGTERM only set a flag ([`check_interrupted`]), so an interrupted task returns an
//! error and unwinds through the same guards. [`remove_stale_namespaces`] removes what a task
//! killed outright (kill -9) left behind.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cmd;

/// Set by SIGINT/SIGTERM.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set the flag [`check_interrupted`] reads instead of killing us.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe; the handler
        // stays valid for the life of the process.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Whether Ctrl-C (or SIGTERM) arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error once Ctrl-C arrived, so the caller unwinds and the guards clean up.
pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

/// Sleeps in small slices so Ctrl-C is noticed.
pub fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    check_interrupted()
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates namespace `name` with its loopback up.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        cmd::run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (`/run/netns/NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        cmd::run(
            Command::new("ip")
                .args(["-n", &self.name])
                .args(args)
                .stdout(Stdio::null()),
        )
    }

    /// Runs `ip -n NAME -batch -` with `lines` (one `ip` command each) on stdin: thousands of
    /// addresses in one process.
    pub fn ip_batch(&self, lines: &str) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start ip -batch")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(lines.as_bytes())
                .context("writing to ip -batch")?;
        }
        let status = child.wait().context("waiting for ip -batch")?;
        if !status.success() {
            bail!("ip -n {} -batch failed ({status})", self.name);
        }
        Ok(())
    }

    /// A command that runs `program` inside the namespace. `nsenter --net` (not `ip netns
    /// exec`) keeps the host's /sys, so bpffs stays reachable for the daemon. nsenter execs
    /// `program` in place, so the child's pid is the program's.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }

    /// The namespace file, for [`enter`] on a thread of one's own.
    pub fn file(&self) -> anyhow::Result<File> {
        File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("open namespace {}", self.name))
    }

    /// Runs `f` on a thread inside the namespace and waits for it.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let file = self.file()?;
        std::thread::spawn(move || {
            enter(&file)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Enters the network namespace behind `file` on the calling thread.
pub fn enter(file: &File) -> anyhow::Result<()> {
    // SAFETY: the fd is an open namespace file for the duration of the call; setns changes
    // only the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Connects two namespaces with a veth pair, each end with an IPv4 address and prefix length.
pub fn veth(
    one: (&NetNs, &str, Ipv4Addr),
    other: (&NetNs, &str, Ipv4Addr),
    prefix_len: u8,
) -> anyhow::Result<()> {
    cmd::run(Command::new("ip").args([
        "link",
        "add",
        one.1,
        "netns",
        &one.0.name,
        "type",
        "veth",
        "peer",
        "name",
        other.1,
        "netns",
        &other.0.name,
    ]))?;
    for (ns, ifname, ip) in [one, other] {
        ns.ip(&["addr", "add", &format!("{ip}/{prefix_len}"), "dev", ifname])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Deletes namespaces named `<prefix><pid>-*` (and the temporary directory
/// `<temp_prefix><pid>`) whose task process is gone (killed with -9), stopping what still runs
/// inside them (the daemon has its own process group, so it outlives a killed task).
pub fn remove_stale_namespaces(prefix: &str, temp_prefix: &str) {
    let Some(list) = cmd::output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) || is_alive(pid) {
            continue;
        }
        let pids =
            cmd::output(Command::new("ip").args(["netns", "pids", name])).unwrap_or_default();
        for p in pids
            .lines()
            .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
        {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(p, libc::SIGTERM);
            }
        }
        if !pids.trim().is_empty() {
            std::thread::sleep(Duration::from_secs(1));
        }
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("{temp_prefix}{pid}")));
    }
}

/// Whether process `pid` runs (a zombie does not count: it is dead, only not yet reaped).
pub fn is_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state letter follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// A temporary directory `<prefix><pid>` (mode 0700), removed on drop.
#[derive(Debug)]
pub struct TempDir {
    /// Where it is.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/<prefix><our pid>`, replacing a leftover of the same name.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let path = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }

    /// A path inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The protected service: a TCP listener in a namespace that greets with a banner line and
/// echoes what it gets. Stops on drop.
#[derive(Debug)]
pub struct TcpService {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpService {
    /// Listens on `0.0.0.0:port` in `ns`.
    pub fn start(ns: &NetNs, port: u16, banner: &'static str) -> anyhow::Result<Self> {
        let file = ns.file()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let listener = enter(&file).and_then(|()| {
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        std::thread::spawn(move || serve(stream, banner));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("service thread died"))??;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

/// One connection: the banner, then an echo until EOF (bounded in time).
fn serve(mut stream: TcpStream, banner: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.write_all(format!("{banner}\r\n").as_bytes());
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(buf.get(..n).unwrap_or_default()).is_err() {
            break;
        }
    }
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `capyknock server` in a namespace, in its own process group (so Ctrl-C reaches only the
/// task, which then stops it in order). Stopped with SIGTERM on drop, SIGKILL if it lingers.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `bin server --config CONFIG EXTRA...` in `ns`, stdout and stderr to `log`.
    pub fn start(
        bin: &Path,
        ns: &NetNs,
        config: &Path,
        log: &Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let log_file = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = ns
            .command(bin)
            .args(["server", "--config", path_str(config)?])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .context("cannot start capyknock server")?;
        Ok(Self {
            child: Some(child),
            log: log.to_owned(),
        })
    }

    /// The daemon's pid (nsenter execs it in place), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits until `capyknock status` answers (or the daemon exits).
    pub fn wait_ready(&mut self, bin: &Path, socket: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            check_interrupted()?;
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "capyknock server exited ({status}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let ok = Command::new(bin)
                .args(["status", "--socket", path_str(socket)?])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "capyknock server did not become ready in 20 s:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            sleep(Duration::from_millis(100))?;
        }
    }

    /// Stops the daemon: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates `path` (it must not exist) with mode 0600 and `bytes` in it.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `path` as UTF-8 (every path here is one we made).
pub fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Runs `cmd` with `input` on stdin; (success, stdout + stderr). Fails only if it cannot run,
/// or when Ctrl-C arrived meanwhile (it reaches the whole foreground process group, so a child
/// that died of it is not a failure of its own).
pub fn capture_with_stdin(cmd: &mut Command, input: &str) -> anyhow::Result<(bool, String)> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", cmd::describe(cmd)))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", cmd::describe(cmd)))?;
    check_interrupted()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// Runs `cmd`; its stdout and stderr together, or an error with them.
pub fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let (ok, text) = capture_with_stdin(cmd, "")?;
    if !ok {
        bail!("{} failed:\n{text}", cmd::describe(cmd));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_alive_knows_ourselves_and_not_a_free_pid() {
        assert!(is_alive(&std::process::id().to_string()));
        // Above the kernel's largest possible pid_max (2^22).
        assert!(!is_alive("4194305"));
    }

    #[test]
    fn temp_dir_is_private_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = {
            let dir = TempDir::new("xtask-topology-test-").unwrap();
            let mode = std::fs::metadata(&dir.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
            write_private(&dir.file("f"), b"x").unwrap();
            assert!(write_private(&dir.file("f"), b"y").is_err(), "create_new");
            dir.path.clone()
        };
        assert!(!path.exists());
    }
}
