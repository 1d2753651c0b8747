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
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{self, command, is_root, workspace_root},
    topology::{
        Daemon, NetNs, TcpService, TempDir, capture, capture_with_stdin, check_interrupted,
        install_signal_handlers, path_str, remove_stale_namespaces, sleep, veth, write_private,
    },
};

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
/// The demo's temporary directory is `$TMPDIR/capyknock-demo-<pid>`.
const TEMP_PREFIX: &str = "capyknock-demo-";

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 2);
const SERVER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
const SERVER_ATTACKER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 1);
const ATTACKER_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 2, 2);

pub fn demo(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the demo needs root (network namespaces, XDP, nftables): run \
             `sudo -E env PATH=\"$PATH\" cargo xtask demo`"
        );
    }
    install_signal_handlers();
    remove_stale_namespaces("ckdemo-", TEMP_PREFIX);
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
    _service: TcpService,
    server: NetNs,
    client: NetNs,
    attacker: NetNs,
    dir: TempDir,
}

impl World {
    fn new(story: &Story) -> anyhow::Result<Self> {
        let dir = TempDir::new(TEMP_PREFIX)?;
        let tag = std::process::id();
        let server = NetNs::new(&format!("ckdemo-{tag}-server"))?;
        let client = NetNs::new(&format!("ckdemo-{tag}-client"))?;
        let attacker = NetNs::new(&format!("ckdemo-{tag}-attacker"))?;
        veth(
            (&server, "srv-c", SERVER_CLIENT_SIDE),
            (&client, "cli", CLIENT_V4),
            24,
        )?;
        veth(
            (&server, "srv-a", SERVER_ATTACKER_SIDE),
            (&attacker, "att", ATTACKER_V4),
            24,
        )?;
        story.say(&format!(
            "namespaces: client {CLIENT_V4} <-> {SERVER_CLIENT_SIDE} server \
             {SERVER_ATTACKER_SIDE} <-> {ATTACKER_V4} attacker"
        ));
        let service = TcpService::start(&server, SERVICE_PORT, BANNER)?;
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
        self.dir.file(name)
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
        &["--capture", "xdp", "--firewall", "nftables"],
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
        show_log(world.daemon()?, story);
        bail!("the knock did not open the port");
    }
    check_interrupted()?;
    story.say(&format!("client: connect to {target}"));
    let after = world.client.run(move || probe(target))?;
    result(&after.describe());
    if !after.is_open() {
        show_log(world.daemon()?, story);
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

/// Prints the daemon's log so far.
fn show_log(daemon: &Daemon, story: &Story) {
    story.say("server log:");
    show(&std::fs::read_to_string(daemon.log()).unwrap_or_default());
}
