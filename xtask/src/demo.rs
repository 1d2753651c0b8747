//! `cargo xtask demo`: the whole story in a minute, in three throwaway network namespaces.
//!
//! ```text
//!   [client]  veth 10.99.1.2 ---- 10.99.1.1 [server] 10.99.2.1 ---- 10.99.2.2 veth  [attacker]
//!                                  capyknock server: XDP on both veths, nftables,
//!                                  a TCP banner service on tcp/22
//! ```
//!
//! As root, touching nothing on the host: every interface, XDP program, nftables table and
//! socket lives in namespaces named `ckdemo-<pid>-*`, and the files in a temporary directory.
//! The story: keygen a user -> start the daemon -> the port is closed -> knock with the code the
//! authenticator app shows -> the port is open -> an attacker replays the captured knock from its
//! own address: refused -> `capyknock ban` the client -> access gone -> `capyknock status`.
//!
//! Cleanup runs on every exit: the guards below stop the daemon and delete the namespaces and
//! files when dropped, and Ctrl-C (SIGINT/SIGTERM) only sets a flag that the next step checks,
//! so an interrupted demo unwinds through the same guards. Namespaces left by a demo that was
//! killed outright (kill -9) are removed at the next start.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
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

use crate::cmd::{self, command, is_root, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Use the release build (`cargo build --release`) instead of the debug build.
    #[arg(long)]
    pub release: bool,
    /// Do not run setup nor build: use the existing binary.
    #[arg(long)]
    pub no_build: bool,
    /// Pause for Enter between the steps (for presenting).
    #[arg(long)]
    pub pause: bool,
}

/// UDP port the daemon watches for knocks.
const KNOCK_PORT: u16 = 62201;
/// The protected service's port inside the server namespace.
const SERVICE_PORT: u16 = 22;
/// What the banner service says first.
const BANNER: &str = "SSH-2.0-capyknock-demo";
/// How long a connection attempt waits before calling the port closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 2);
const SERVER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
const SERVER_ATTACKER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 1);
const ATTACKER_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 2);

/// Set by SIGINT/SIGTERM.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe; the handler
        // stays valid for the life of the process.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: cleaning up");
    }
    Ok(())
}

/// Sleeps in small slices so Ctrl-C is noticed.
fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    check_interrupted()
}

pub fn demo(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the demo needs root (network namespaces, XDP, nftables): run \
             `sudo -E env PATH=\"$PATH\" cargo xtask demo`"
        );
    }
    install_signal_handlers();
    remove_stale_namespaces();
    let started = Instant::now();
    let mut story = Story {
        started,
        pause: opts.pause,
    };
    let bin = build(opts, &mut story)?;
    let result = run_story(&bin, &mut story);
    story.say(match &result {
        Ok(()) => "done: daemon stopped, namespaces and files removed",
        Err(_) => "stopped: daemon stopped, namespaces and files removed",
    });
    result
}

fn build(opts: &Options, story: &mut Story) -> anyhow::Result<PathBuf> {
    let profile = if opts.release { "release" } else { "debug" };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let bin = target.join(profile).join("capyknock");
    if !opts.no_build {
        story.say("setup: cargo xtask setup (installs what is missing)");
        crate::setup::setup(&crate::setup::Options {})?;
        let mut args = vec!["build", "--quiet", "-p", "capyknock"];
        if opts.release {
            args.push("--release");
        }
        story.say(&format!("build: cargo {}", args.join(" ")));
        cmd::run(command("cargo", &args).stdout(Stdio::null()))?;
    }
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (leave out --no-build)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Everything the story runs in. Fields drop in order: daemon, service, namespaces, files.
struct World {
    daemon: Option<Daemon>,
    _service: BannerService,
    server: NetNs,
    client: NetNs,
    attacker: NetNs,
    dir: TempDir,
}

impl World {
    fn new(story: &Story) -> anyhow::Result<Self> {
        let dir = TempDir::new()?;
        let tag = std::process::id();
        let server = NetNs::new(&format!("ckdemo-{tag}-server"))?;
        let client = NetNs::new(&format!("ckdemo-{tag}-client"))?;
        let attacker = NetNs::new(&format!("ckdemo-{tag}-attacker"))?;
        veth(
            (&server, "srv-c", SERVER_CLIENT_SIDE),
            (&client, "cli", CLIENT_V4),
        )?;
        veth(
            (&server, "srv-a", SERVER_ATTACKER_SIDE),
            (&attacker, "att", ATTACKER_V4),
        )?;
        story.say(&format!(
            "namespaces: client {CLIENT_V4} <-> {SERVER_CLIENT_SIDE} server \
             {SERVER_ATTACKER_SIDE} <-> {ATTACKER_V4} attacker"
        ));
        let service = BannerService::start(&server)?;
        story.say(&format!(
            "server: a TCP service on tcp/{SERVICE_PORT} answers \"{BANNER}\" (stands in for sshd)"
        ));
        Ok(Self {
            daemon: None,
            _service: service,
            server,
            client,
            attacker,
            dir,
        })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    fn daemon(&self) -> anyhow::Result<&Daemon> {
        self.daemon.as_ref().context("the daemon is not running")
    }
}

fn run_story(bin: &Path, story: &mut Story) -> anyhow::Result<()> {
    let mut world = World::new(story)?;
    check_interrupted()?;
    let app = keygen(bin, &world, story)?;
    story.step()?;
    story.say(
        "server: capyknock server --config $DIR/server.toml --capture xdp --firewall nftables",
    );
    let mut daemon = Daemon::start(
        bin,
        &world.server,
        &world.file("server.toml"),
        &world.file("server.log"),
    )?;
    daemon.wait_ready(bin, &world.file("control.sock"))?;
    world.daemon = Some(daemon);
    story.say("server: ready: XDP attached to srv-c and srv-a, nftables table in place");
    story.step()?;
    knock(bin, &world, story, &app)?;
    story.step()?;
    replay(&world, story)?;
    story.step()?;
    ban(bin, &world, story)?;
    story.step()?;
    story.say("admin: capyknock status");
    let socket = world.file("control.sock");
    let out = capture(Command::new(bin).args(["status", "--socket", path_str(&socket)?]))?;
    show(&out);
    if let Some(d) = world.daemon.as_mut() {
        d.stop();
    }
    Ok(())
}

/// The admin creates alice; the demo's "phone" reads the otpauth URI.
fn keygen(bin: &Path, world: &World, story: &Story) -> anyhow::Result<Authenticator> {
    let server_toml = world.file("server.toml");
    let client_toml = world.file("client.toml");
    write_server_config(&server_toml, &world.dir.path)?;
    let args = [
        "keygen",
        "--nickname",
        "alice",
        "--server",
        &SERVER_CLIENT_SIDE.to_string(),
        "--ports",
        &SERVICE_PORT.to_string(),
        "--profile",
        "work",
        "--server-config",
        path_str(&server_toml)?,
        "--client-config",
        path_str(&client_toml)?,
        "--no-qr",
    ]
    .map(str::to_owned);
    story.say(&format!(
        "admin: capyknock {}",
        args.join(" ").replace(path_str(&world.dir.path)?, "$DIR")
    ));
    let out = capture(Command::new(bin).args(&args))?;
    show(&out);
    let uri = out
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .context("keygen printed no otpauth:// URI")?;
    Authenticator::from_uri(uri)
}

/// Closed -> knock -> open.
fn knock(bin: &Path, world: &World, story: &Story, app: &Authenticator) -> anyhow::Result<()> {
    let target = SocketAddr::new(IpAddr::V4(SERVER_CLIENT_SIDE), SERVICE_PORT);
    story.say(&format!("client: connect to {target}"));
    let before = world.client.run(move || probe(target))?;
    result(&before.describe());
    if before.is_open() {
        bail!("the port answered before any knock: the firewall is not in place");
    }
    check_interrupted()?;
    let code = app.code_now()?;
    story.say(&format!(
        "client: the authenticator app shows {code}; capyknock knock work --otp-stdin"
    ));
    let mut cmd = world.client.command(bin);
    cmd.args([
        "knock",
        "work",
        "--client-config",
        path_str(&world.file("client.toml"))?,
        "--otp-stdin",
        "--save-packet",
        path_str(&world.file("knock.bin"))?,
    ]);
    let (ok, out) = capture_with_stdin(&mut cmd, &format!("{code}\n"))?;
    show(&out);
    if !ok {
        world.daemon()?.show_log(story);
        bail!("the knock did not open the port");
    }
    check_interrupted()?;
    story.say(&format!("client: connect to {target}"));
    let after = world.client.run(move || probe(target))?;
    result(&after.describe());
    if !after.is_open() {
        world.daemon()?.show_log(story);
        bail!("the port is still closed after the knock");
    }
    Ok(())
}

/// The attacker sends the recorded knock from its own address: nothing opens.
fn replay(world: &World, story: &Story) -> anyhow::Result<()> {
    let packet = std::fs::read(world.file("knock.bin")).context("reading the saved knock")?;
    let knock_to = SocketAddr::new(IpAddr::V4(SERVER_ATTACKER_SIDE), KNOCK_PORT);
    story.say(&format!(
        "attacker: replays the captured knock ({} bytes) from {ATTACKER_V4} to {knock_to}",
        packet.len()
    ));
    world.attacker.run(move || -> anyhow::Result<()> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        for _ in 0..3 {
            socket.send_to(&packet, knock_to)?;
        }
        Ok(())
    })??;
    sleep(Duration::from_millis(300))?;
    let target = SocketAddr::new(IpAddr::V4(SERVER_ATTACKER_SIDE), SERVICE_PORT);
    story.say(&format!("attacker: connect to {target}"));
    let replayed = world.attacker.run(move || probe(target))?;
    result(&format!(
        "{}: the replay opened nothing",
        replayed.describe()
    ));
    if replayed.is_open() {
        bail!("the replayed knock opened the port for the attacker");
    }
    Ok(())
}

/// fail2ban's move: ban the client; its access is gone.
fn ban(bin: &Path, world: &World, story: &Story) -> anyhow::Result<()> {
    story.say(&format!(
        "admin: capyknock ban {CLIENT_V4} (what the fail2ban action runs)"
    ));
    let socket = world.file("control.sock");
    let out = capture(Command::new(bin).args([
        "ban",
        &CLIENT_V4.to_string(),
        "--socket",
        path_str(&socket)?,
    ]))?;
    show(&out);
    let target = SocketAddr::new(IpAddr::V4(SERVER_CLIENT_SIDE), SERVICE_PORT);
    story.say(&format!("client: connect to {target}"));
    let banned = world.client.run(move || probe(target))?;
    result(&format!("{}: access gone", banned.describe()));
    if banned.is_open() {
        bail!("the port still answers the banned client");
    }
    Ok(())
}

/// Narration with elapsed time.
struct Story {
    started: Instant,
    pause: bool,
}

impl Story {
    fn say(&self, line: &str) {
        println!("[{:>5.1}s] {line}", self.started.elapsed().as_secs_f64());
    }

    fn step(&mut self) -> anyhow::Result<()> {
        check_interrupted()?;
        if self.pause {
            print!("         (Enter to go on) ");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        check_interrupted()
    }
}

/// An indented result line.
fn result(line: &str) {
    println!("         -> {line}");
}

/// Another program's output, indented.
fn show(text: &str) {
    for line in text.lines() {
        println!("         | {line}");
    }
}

/// What a connection attempt found.
enum Probe {
    Open(String),
    Refused,
    Timeout,
    Failed(std::io::Error),
}

impl Probe {
    fn is_open(&self) -> bool {
        matches!(self, Probe::Open(_))
    }

    fn describe(&self) -> String {
        match self {
            Probe::Open(banner) => format!("open, the service says {banner:?}"),
            Probe::Refused => "refused".into(),
            Probe::Timeout => format!(
                "no answer in {} s (closed: the server stays silent)",
                CONNECT_TIMEOUT.as_secs()
            ),
            Probe::Failed(e) => format!("failed: {e}"),
        }
    }
}

/// Connects and reads the banner line.
fn probe(target: SocketAddr) -> Probe {
    match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
        Ok(stream) => {
            let _ = stream.set_read_timeout(Some(CONNECT_TIMEOUT));
            let mut line = String::new();
            let _ = BufReader::new(stream).take(256).read_line(&mut line);
            Probe::Open(line.trim_end().to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        Err(e)
            if e.kind() == std::io::ErrorKind::TimedOut
                || e.kind() == std::io::ErrorKind::WouldBlock =>
        {
            Probe::Timeout
        }
        Err(e) => Probe::Failed(e),
    }
}

/// The server config the demo starts from; keygen appends the user. Paths point into the
/// demo's temporary directory, never at /var/lib or /run.
fn write_server_config(path: &Path, dir: &Path) -> anyhow::Result<()> {
    let dir = path_str(dir)?;
    let text = format!(
        "# capyknock demo server (cargo xtask demo): everything lives in {dir}.\n\
         [server]\n\
         knock_ports = [{KNOCK_PORT}]\n\
         interfaces = [\"srv-c\", \"srv-a\"]\n\
         capture = \"xdp\"\n\
         state_dir = \"{dir}/state\"\n\
         control_socket = \"{dir}/control.sock\"\n\
         default_access = \"5m\"\n\
         \n\
         [firewall]\n\
         backend = \"nftables\"\n"
    );
    write_private(path, text.as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
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

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Runs `cmd`; its stdout and stderr together, or an error with them.
fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let (ok, text) = capture_with_stdin(cmd, "")?;
    if !ok {
        bail!("{} failed:\n{text}", cmd::describe(cmd));
    }
    Ok(text)
}

/// Runs `cmd` with `input` on stdin; (success, stdout + stderr).
fn capture_with_stdin(cmd: &mut Command, input: &str) -> anyhow::Result<(bool, String)> {
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
    // Ctrl-C reaches the whole foreground process group: a child that died of it is not a
    // failure of the story.
    check_interrupted()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// The user's authenticator app: reads the `otpauth://` URI (what scanning the QR code gives)
/// and shows the current code.
struct Authenticator {
    totp: totp_rs::Totp,
}

impl Authenticator {
    fn from_uri(uri: &str) -> anyhow::Result<Self> {
        let query = uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let secret = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("secret="))
            .context("otpauth URI without secret")?;
        let secret = totp_rs::Secret::try_from_base32(secret)
            .map_err(|e| anyhow::anyhow!("bad secret in the otpauth URI: {e}"))?;
        let totp = totp_rs::Builder::new()
            .with_algorithm(totp_rs::Algorithm::SHA1)
            .with_digits(6)
            .with_step_duration(30)
            .with_secret(secret)
            .build()
            .map_err(|e| anyhow::anyhow!("TOTP setup: {e}"))?;
        Ok(Self { totp })
    }

    /// The code for now. Waits for the next one when this one is about to expire, as a person
    /// would (the knock must arrive within the same step or the next).
    fn code_now(&self) -> anyhow::Result<String> {
        let now = unix_now();
        if now % 30 > 27 {
            sleep(Duration::from_secs(30 - now % 30))?;
        }
        Ok(self.totp.generate(unix_now()).to_string())
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A named network namespace, deleted on drop.
struct NetNs {
    name: String,
}

impl NetNs {
    fn new(name: &str) -> anyhow::Result<Self> {
        cmd::run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        cmd::run(
            Command::new("ip")
                .args(["-n", &self.name])
                .args(args)
                .stdout(Stdio::null()),
        )
    }

    /// A command that runs `program` inside the namespace. `nsenter --net` (not `ip netns
    /// exec`) keeps the host's /sys, so bpffs stays reachable for the daemon.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let file = File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("open namespace {}", self.name))?;
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
fn enter(file: &File) -> anyhow::Result<()> {
    // SAFETY: the fd is an open namespace file for the duration of the call; setns changes
    // only the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Connects two namespaces with a veth pair and IPv4 addresses (/24).
fn veth(one: (&NetNs, &str, Ipv4Addr), other: (&NetNs, &str, Ipv4Addr)) -> anyhow::Result<()> {
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
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", ifname])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Deletes `ckdemo-<pid>-*` namespaces (and their files) whose demo process is gone (killed
/// with -9), stopping the daemon left inside.
fn remove_stale_namespaces() {
    let Some(list) = cmd::output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix("ckdemo-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if is_alive(pid) {
            continue;
        }
        // Its daemon may still run (it has its own process group): stop what runs inside.
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
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("capyknock-demo-{pid}")));
    }
}

/// Whether process `pid` runs (a zombie does not count: it is dead, only not yet reaped).
fn is_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state letter follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// A temporary directory (mode 0700), removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let path = std::env::temp_dir().join(format!("capyknock-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The protected service: a TCP listener in the server namespace that greets with [`BANNER`]
/// and echoes what it gets. Stops on drop.
struct BannerService {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BannerService {
    fn start(ns: &NetNs) -> anyhow::Result<Self> {
        let file = File::open(format!("/run/netns/{}", ns.name))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let listener = enter(&file).and_then(|()| {
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, SERVICE_PORT))?;
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
                        std::thread::spawn(move || serve(stream));
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
fn serve(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.write_all(format!("{BANNER}\r\n").as_bytes());
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(buf.get(..n).unwrap_or_default()).is_err() {
            break;
        }
    }
}

impl Drop for BannerService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The daemon in the server namespace, in its own process group (so Ctrl-C reaches only the
/// demo, which then stops it in order). Stopped with SIGTERM on drop, SIGKILL if it lingers.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(bin: &Path, ns: &NetNs, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let log_file = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = ns
            .command(bin)
            .args(["server", "--config", path_str(config)?])
            .args(["--capture", "xdp", "--firewall", "nftables"])
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

    /// Waits until `capyknock status` answers (or the daemon exits).
    fn wait_ready(&mut self, bin: &Path, socket: &Path) -> anyhow::Result<()> {
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

    fn show_log(&self, story: &Story) {
        story.say("server log:");
        show(&std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    fn stop(&mut self) {
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
