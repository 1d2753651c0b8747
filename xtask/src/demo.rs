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
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use capyknock_testkit::{
    KNOCK_PORT,
    clock::{secs_left_in_step, unix_now},
    config::{ServerToml, otpauth_secret, otpauth_uri},
    daemon::{Daemon, DaemonOptions},
    files::{TempDir, path_str, write_private},
    netns::{self, NetNs, veth},
    probe::{Probe, probe_from},
    process::{self, output_text, run_with_stdin},
    service::TcpService,
    wait::{check_interrupted, install_signal_handlers, sleep},
};

use crate::cmd::{self, is_root};

#[derive(Debug, clap::Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches, as clap derives them"
)]
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
    /// The fleet story instead: two servers sharing one-time knocks and bans through a
    /// three-member etcd cluster (docs/FLEET.md).
    #[arg(long)]
    pub fleet: bool,
}

/// The protected service's port inside the server namespace.
pub(crate) const SERVICE_PORT: u16 = 22;
/// What the banner service says first.
pub(crate) const BANNER: &str = "SSH-2.0-capyknock-demo";
/// How long a connection attempt waits before calling the port closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The demo's temporary directory is `$TMPDIR/capyknock-demo-<pid>`.
pub(crate) const TEMP_PREFIX: &str = "capyknock-demo-";

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
    install_signal_handlers()?;
    netns::remove_stale("ckdemo-", TEMP_PREFIX);
    let started = Instant::now();
    let mut story = Story {
        started,
        pause: opts.pause,
    };
    let bin = build(opts, &mut story)?;
    let result = if opts.fleet {
        crate::demo_fleet::run_story(&bin, &mut story)
    } else {
        run_story(&bin, &mut story)
    };
    story.say(match &result {
        Ok(()) => "done: daemon stopped, namespaces and files removed",
        Err(_) => "stopped: daemon stopped, namespaces and files removed",
    });
    result
}

pub(crate) fn build(opts: &Options, story: &mut Story) -> anyhow::Result<PathBuf> {
    if !opts.no_build {
        story.say("setup: cargo xtask setup (installs what is missing)");
        crate::setup::setup(&crate::setup::Options::tests())?;
    }
    cmd::capyknock_binary(opts.release, opts.no_build, |cargo| {
        story.say(&format!("build: {cargo}"));
    })
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
        let dir = TempDir::for_process(TEMP_PREFIX)?;
        let tag = std::process::id();
        let server = NetNs::new(&format!("ckdemo-{tag}-server"))?;
        let client = NetNs::new(&format!("ckdemo-{tag}-client"))?;
        let attacker = NetNs::new(&format!("ckdemo-{tag}-attacker"))?;
        veth(
            (&server, "srv-c", IpAddr::V4(SERVER_CLIENT_SIDE)),
            (&client, "cli", IpAddr::V4(CLIENT_V4)),
            24,
        )?;
        veth(
            (&server, "srv-a", IpAddr::V4(SERVER_ATTACKER_SIDE)),
            (&attacker, "att", IpAddr::V4(ATTACKER_V4)),
            24,
        )?;
        story.say(&format!(
            "namespaces: client {CLIENT_V4} <-> {SERVER_CLIENT_SIDE} server \
             {SERVER_ATTACKER_SIDE} <-> {ATTACKER_V4} attacker"
        ));
        let service =
            TcpService::start(&server, &[SERVICE_PORT], format!("{BANNER}\r\n").as_bytes())?;
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
        &world.server,
        &DaemonOptions {
            bin,
            config: &world.file("server.toml"),
            log: &world.file("server.log"),
            args: &["--capture", "xdp", "--firewall", "nftables"],
            wrapper: &[],
            rust_log: None,
            own_process_group: true,
        },
    )?;
    daemon.wait_status_ready(bin, &world.file("control.sock"))?;
    world.daemon = Some(daemon);
    story.say(
        "server: ready: kernel pre-filter attached to srv-c and srv-a, nftables table in place",
    );
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
    let uri = otpauth_uri(&out).context("keygen printed no otpauth:// URI")?;
    Authenticator::from_uri(uri)
}

/// Closed -> knock -> open.
fn knock(bin: &Path, world: &World, story: &Story, app: &Authenticator) -> anyhow::Result<()> {
    let target = SocketAddr::new(IpAddr::V4(SERVER_CLIENT_SIDE), SERVICE_PORT);
    let before = connect(story, "client", &world.client, target)?;
    result(&before.to_string());
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
    let after = connect(story, "client", &world.client, target)?;
    result(&after.to_string());
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
    let sent = world.attacker.send_udp(None, knock_to, &[&packet; 3])?;
    if sent != 3 {
        bail!("the attacker's kernel took {sent} of 3 copies");
    }
    sleep(Duration::from_millis(300))?;
    let target = SocketAddr::new(IpAddr::V4(SERVER_ATTACKER_SIDE), SERVICE_PORT);
    let replayed = connect(story, "attacker", &world.attacker, target)?;
    result(&format!("{replayed}: the replay opened nothing"));
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
    let banned = connect(story, "client", &world.client, target)?;
    result(&format!("{banned}: access gone"));
    if banned.is_open() {
        bail!("the port still answers the banned client");
    }
    Ok(())
}

/// `who` connects from `ns` to `target`, as the story tells.
pub(crate) fn connect(
    story: &Story,
    who: &str,
    ns: &NetNs,
    target: SocketAddr,
) -> anyhow::Result<Probe> {
    story.say(&format!("{who}: connect to {target}"));
    Ok(probe_from(ns, target, CONNECT_TIMEOUT)?)
}

/// Narration with elapsed time.
pub(crate) struct Story {
    pub(crate) started: Instant,
    pub(crate) pause: bool,
}

impl Story {
    pub(crate) fn say(&self, line: &str) {
        println!("[{:>5.1}s] {line}", self.started.elapsed().as_secs_f64());
    }

    pub(crate) fn step(&mut self) -> anyhow::Result<()> {
        check_interrupted()?;
        if self.pause {
            print!("         (Enter to go on) ");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        Ok(check_interrupted()?)
    }
}

/// An indented result line.
pub(crate) fn result(line: &str) {
    println!("         -> {line}");
}

/// Another program's output, indented.
pub(crate) fn show(text: &str) {
    for line in text.lines() {
        println!("         | {line}");
    }
}

/// The server config the demo starts from; keygen appends the user. Paths point into the
/// demo's temporary directory, never at /var/lib or /run.
fn write_server_config(path: &Path, dir: &Path) -> anyhow::Result<()> {
    let comment = format!(
        "capyknock demo server (cargo xtask demo): everything lives in {}.",
        path_str(dir)?
    );
    let text = ServerToml {
        comment: Some(&comment),
        knock_port: KNOCK_PORT,
        interfaces: &["srv-c", "srv-a"],
        state_dir: &dir.join("state"),
        control_socket: &dir.join("control.sock"),
        default_access: Some("5m"),
        extra: "",
    }
    .render();
    Ok(write_private(path, text.as_bytes())?)
}

/// The user's authenticator app: reads the `otpauth://` URI (what scanning the QR code gives)
/// and shows the current code.
pub(crate) struct Authenticator {
    totp: totp_rs::Totp,
}

impl Authenticator {
    pub(crate) fn from_uri(uri: &str) -> anyhow::Result<Self> {
        let secret = otpauth_secret(uri).context("otpauth URI without secret")?;
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
    pub(crate) fn code_now(&self) -> anyhow::Result<String> {
        let left = secs_left_in_step();
        if left < 3 {
            sleep(Duration::from_secs(left))?;
        }
        Ok(self.totp.generate(unix_now()).to_string())
    }
}

/// Prints the daemon's log so far.
fn show_log(daemon: &Daemon, story: &Story) {
    story.say("server log:");
    show(&daemon.log_text());
}

/// Runs `cmd` with `input` on stdin; (success, stdout + stderr). Fails only if it cannot run, or
/// when Ctrl-C arrived meanwhile.
pub(crate) fn capture_with_stdin(cmd: &mut Command, input: &str) -> anyhow::Result<(bool, String)> {
    let out = run_with_stdin(cmd, input)?;
    Ok((out.status.success(), output_text(&out)))
}

/// Runs `cmd`; its stdout and stderr together, or an error with them.
pub(crate) fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    Ok(output_text(&process::run(cmd)?))
}
