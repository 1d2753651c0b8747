//! `cargo xtask demo --fleet`: two capyknock servers share one-time knocks and bans through a
//! three-member etcd cluster (docs/FLEET.md).
//!
//! ```text
//!                 cla 10.99.1.2 ---- 10.99.1.1 [server A: capyknock node-a] ---+
//!   [client]                                                                   +-- [etcd: 3 members]
//!                 clb 10.99.3.2 ---- 10.99.3.1 [server B: capyknock node-b] ---+
//! ```
//!
//! The story: keygen alice on A, the same user on B -> knock A: open -> the captured knock sent
//! to B from the client's other address: refused as replayed in the fleet -> `capyknock ban`
//! on A reaches B -> the keys in etcd -> `capyknock status` on B. Everything lives in
//! namespaces and a temporary directory removed on exit, as in the plain demo.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use capyknock_testkit::{
    KNOCK_PORT,
    config::{ServerToml, otpauth_uri},
    daemon::{Daemon, DaemonOptions},
    etcd::EtcdCluster,
    files::{TempDir, path_str, write_private},
    netns::{NetNs, veth},
    service::TcpService,
    wait::{check_interrupted, sleep},
};

use crate::demo::{
    Authenticator, BANNER, SERVICE_PORT, Story, TEMP_PREFIX, capture, capture_with_stdin, connect,
    result, show,
};

const CLIENT_A: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 2);
const SERVER_A: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
const CLIENT_B: Ipv4Addr = Ipv4Addr::new(10, 99, 3, 2);
const SERVER_B: Ipv4Addr = Ipv4Addr::new(10, 99, 3, 1);
const PREFIX: &str = "/capyknock/";

/// Fields drop in order: daemons, services, namespaces, etcd, files.
struct World {
    daemons: Vec<Daemon>,
    _services: Vec<TcpService>,
    a: NetNs,
    b: NetNs,
    client: NetNs,
    etcd: EtcdCluster,
    dir: TempDir,
}

#[expect(
    clippy::too_many_lines,
    reason = "one story told in order, each step beside its narration"
)]
pub fn run_story(bin: &Path, story: &mut Story) -> anyhow::Result<()> {
    let dir = TempDir::for_process(TEMP_PREFIX)?;
    let tag = std::process::id();
    story.say("etcd: starting three members (etcd 3.4) in a namespace of their own");
    let etcd = EtcdCluster::start("ckfleet", 3)?;
    let a = NetNs::new(&format!("ckdemo-{tag}-a"))?;
    let b = NetNs::new(&format!("ckdemo-{tag}-b"))?;
    let client = NetNs::new(&format!("ckdemo-{tag}-client"))?;
    veth(
        (&a, "srv", IpAddr::V4(SERVER_A)),
        (&client, "cla", IpAddr::V4(CLIENT_A)),
        24,
    )?;
    veth(
        (&b, "srv", IpAddr::V4(SERVER_B)),
        (&client, "clb", IpAddr::V4(CLIENT_B)),
        24,
    )?;
    let link_a = etcd.attach(&a, 240)?;
    let link_b = etcd.attach(&b, 241)?;
    let banner = format!("{BANNER}\r\n");
    let services = vec![
        TcpService::start(&a, &[SERVICE_PORT], banner.as_bytes())?,
        TcpService::start(&b, &[SERVICE_PORT], banner.as_bytes())?,
    ];
    story.say(&format!(
        "namespaces: client {CLIENT_A} <-> {SERVER_A} server A, client {CLIENT_B} <-> \
         {SERVER_B} server B; both servers reach the etcd members"
    ));
    let mut world = World {
        daemons: Vec::new(),
        _services: services,
        a,
        b,
        client,
        etcd,
        dir,
    };
    let header = |node: &str, endpoints: &[String]| -> anyhow::Result<String> {
        let d = world.dir.path.join(node);
        std::fs::create_dir_all(&d).context("node directory")?;
        let mut text = ServerToml {
            comment: Some(&format!("capyknock fleet demo, {node}")),
            knock_port: KNOCK_PORT,
            interfaces: &["srv"],
            state_dir: &d.join("state"),
            control_socket: &d.join("control.sock"),
            default_access: Some("5m"),
            extra: "",
        }
        .render();
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let _ = write!(
            text,
            "\n[cluster]\nendpoints = [{}]\nnode = \"{node}\"\nprefix = \"{PREFIX}\"\n",
            endpoints.join(", ")
        );
        Ok(text)
    };
    let head_a = header("node-a", &world.etcd.endpoints(&link_a))?;
    let head_b = header("node-b", &world.etcd.endpoints(&link_b))?;
    let config_a = world.dir.file("node-a.toml");
    let config_b = world.dir.file("node-b.toml");
    write_private(&config_a, head_a.as_bytes())?;

    // keygen on A; B gets the same user.
    let client_toml = world.dir.file("client.toml");
    story.say("admin: capyknock keygen --nickname alice --server 10.99.1.1 --ports 22 (on A)");
    let out = capture(Command::new(bin).args([
        "keygen",
        "--nickname",
        "alice",
        "--server",
        &SERVER_A.to_string(),
        "--ports",
        &SERVICE_PORT.to_string(),
        "--profile",
        "work",
        "--server-config",
        path_str(&config_a)?,
        "--client-config",
        path_str(&client_toml)?,
        "--no-qr",
    ]))?;
    let app = Authenticator::from_uri(otpauth_uri(&out).context("no otpauth URI")?)?;
    let text_a = std::fs::read_to_string(&config_a).context("reading A's config")?;
    let users = text_a.strip_prefix(&head_a).context("A's config changed")?;
    write_private(&config_b, format!("{head_b}{users}").as_bytes())?;
    story.say("admin: the same [[user]] goes into B's config; both have a [cluster] section");
    story.step()?;

    for (ns, node, config) in [
        (&world.a, "node-a", &config_a),
        (&world.b, "node-b", &config_b),
    ] {
        let d = world.dir.path.join(node);
        let mut daemon = Daemon::start(
            ns,
            &DaemonOptions {
                bin,
                config,
                log: &d.join("server.log"),
                args: &["--capture", "xdp", "--firewall", "nftables"],
                wrapper: &[],
                rust_log: None,
                own_process_group: true,
            },
        )?;
        daemon.wait_status_ready(bin, &d.join("control.sock"))?;
        world.daemons.push(daemon);
        story.say(&format!(
            "{node}: ready (fleet bans caught up before ready)"
        ));
    }
    story.step()?;

    // Knock A.
    let code = app.code_now()?;
    story.say(&format!(
        "client: the app shows {code}; capyknock knock work --otp-stdin (to A)"
    ));
    let mut cmd = world.client.command(bin);
    cmd.args([
        "knock",
        "work",
        "--client-config",
        path_str(&client_toml)?,
        "--otp-stdin",
        "--save-packet",
        path_str(&world.dir.file("knock.bin"))?,
    ]);
    let (ok, out) = capture_with_stdin(&mut cmd, &format!("{code}\n"))?;
    show(&out);
    if !ok {
        bail!("the knock did not open A");
    }
    let target_a = SocketAddr::new(IpAddr::V4(SERVER_A), SERVICE_PORT);
    result(&connect(story, "client", &world.client, target_a)?.to_string());
    story.step()?;

    // The captured knock, to B, from the client's other address.
    let packet = std::fs::read(world.dir.file("knock.bin")).context("the saved knock")?;
    story.say(&format!(
        "attacker: sends the captured knock to server B ({SERVER_B}:{KNOCK_PORT}) from {CLIENT_B}"
    ));
    world.client.send_udp(
        None,
        SocketAddr::new(IpAddr::V4(SERVER_B), KNOCK_PORT),
        &[&packet],
    )?;
    sleep(Duration::from_millis(300))?;
    let target_b = SocketAddr::new(IpAddr::V4(SERVER_B), SERVICE_PORT);
    let probe = connect(story, "attacker", &world.client, target_b)?;
    result(&format!("{probe}: B refused the replay"));
    if probe.is_open() {
        bail!("B opened a knock A had accepted");
    }
    if let Some(d) = world.daemons.get(1) {
        for line in d
            .log_text()
            .lines()
            .filter(|l| l.contains("replayed_in_fleet"))
        {
            show(line);
        }
    }
    story.step()?;

    // A ban on A reaches B.
    let socket_a = world.dir.path.join("node-a").join("control.sock");
    let socket_b = world.dir.path.join("node-b").join("control.sock");
    story.say(&format!(
        "admin: capyknock ban {CLIENT_B} 10m (on A, as fail2ban would)"
    ));
    let started = Instant::now();
    show(&capture(Command::new(bin).args([
        "ban",
        &CLIENT_B.to_string(),
        "10m",
        "--socket",
        path_str(&socket_a)?,
    ]))?);
    loop {
        check_interrupted()?;
        let status = capture(Command::new(bin).args([
            "status",
            "--json",
            "--socket",
            path_str(&socket_b)?,
        ]))?;
        if status.contains(&format!("\"{CLIENT_B}\"")) {
            break;
        }
        if started.elapsed() > Duration::from_secs(2) {
            bail!("the ban did not reach B");
        }
        sleep(Duration::from_millis(5))?;
    }
    result(&format!(
        "B has the ban {:.0} ms later",
        started.elapsed().as_secs_f64() * 1e3
    ));
    story.step()?;

    story.say(&format!("etcd: etcdctl get --prefix --keys-only {PREFIX}"));
    for key in world.etcd.keys(PREFIX)? {
        show(&key);
    }
    story.say("admin: capyknock status (on B)");
    show(&capture(Command::new(bin).args([
        "status",
        "--socket",
        path_str(&socket_b)?,
    ]))?);
    for d in &mut world.daemons {
        d.stop();
    }
    Ok(())
}
