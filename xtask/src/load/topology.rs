//! The benchmark's network, built once for all runs (the diagram is in the module doc of
//! [`super`]): four namespaces and their links, the client's pool of addresses with the
//! server's neighbour entries pinned, the tcp/22 service, the users and their configs, the
//! daemon's state directory, and `nft monitor`. Everything goes on drop.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;
use capyknock_testkit::{
    KNOCK_PORT,
    config::ServerToml,
    etcd::EtcdCluster,
    files::TempDir,
    netns::{NetNs, veth, veth_pair},
    service::TcpService,
    wait::check_interrupted,
};

use super::{
    flood::Calibration,
    legit::Target,
    plan::Plan,
    sample,
    users::{UserSetup, Users},
    watch::NftWatch,
};

/// The protected service's port.
const SERVICE_PORT: u16 = 22;
const BANNER: &str = "SSH-2.0-capyknock-load";
/// How long each grant lasts: short, so client addresses can be used again.
pub const ACCESS: &str = "3s";
/// The second octet of the client side's /16 (10.98.0.0/16).
const CLIENT_NET: u8 = 98;
const SERVER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, CLIENT_NET, 0, 1);
/// The client's own address, the one its captured knock is first sent from.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, CLIENT_NET, 0, 2);
const SINK_V4: Ipv4Addr = Ipv4Addr::new(10, CLIENT_NET, 255, 254);
const SERVER_ATTACKER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
const ATTACKER_V4: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 2);
/// The calibration link: the attacker's `cal0` (10.96.0.2/24) to a peer that stays down.
const CALIBRATION_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 2);
const CALIBRATION_PEER: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// Namespace and temporary directory prefixes.
pub const NS_PREFIX: &str = "ckload-";
pub const TEMP_PREFIX: &str = "capyknock-load-";

/// Where the legit knocks go: the server's knock port and service on the client side.
pub const TARGET: Target = Target {
    knock: SocketAddrV4::new(SERVER_CLIENT_SIDE, KNOCK_PORT),
    service: SocketAddrV4::new(SERVER_CLIENT_SIDE, SERVICE_PORT),
};
/// Where the junk goes: the knock port on the attacker's side.
pub const JUNK_TARGET: SocketAddrV4 = SocketAddrV4::new(SERVER_ATTACKER_SIDE, KNOCK_PORT);
/// Where the calibration floods go: nowhere.
pub const DEAD_END: SocketAddrV4 = SocketAddrV4::new(CALIBRATION_PEER, KNOCK_PORT);

/// Everything the runs share. Fields drop in order: nft monitor, service, namespaces, files.
#[derive(Debug)]
pub struct Lab {
    pub bin: PathBuf,
    pub nft: NftWatch,
    _service: TcpService,
    pub server: NetNs,
    pub client: NetNs,
    pub attacker: NetNs,
    pub sink: NetNs,
    pub addrs: Addresses,
    pub users: Users,
    pub ksoftirqd: Vec<u32>,
    /// What sending costs the sender alone, by junk profile and rate.
    pub calibration: Calibration,
    _state: TempDir,
    /// `--fleet`: the etcd members (their namespace is linked to the server's).
    _etcd: Option<EtcdCluster>,
    pub dir: TempDir,
}

impl Lab {
    pub fn new(bin: &Path, plan: &Plan) -> anyhow::Result<Self> {
        let dir = TempDir::for_process(TEMP_PREFIX)?;
        let tag = std::process::id();
        let ns = |role: &str| NetNs::new(&format!("{NS_PREFIX}{tag}-{role}"));
        let server = ns("server")?;
        let client = ns("client")?;
        let attacker = ns("attacker")?;
        let sink = ns("sink")?;
        wire(&server, &client, &attacker, &sink)?;
        check_interrupted()?;

        let pool = (plan.legit_rate as usize * 20).clamp(plan.knocks_per_run() + 1, 10_000);
        let addrs = Addresses::add(&client, "cli", CLIENT_NET, pool)?;
        pin_neighbours(&server, &client, &addrs)?;
        let service =
            TcpService::start(&server, &[SERVICE_PORT], format!("{BANNER}\r\n").as_bytes())?;

        let count = plan.users_needed();
        println!("load: keygen {count} machine users (--totp-mode derived, --access {ACCESS})");
        let t = Instant::now();
        let state = match &plan.state_parent {
            Some(parent) => {
                TempDir::create(parent.join(format!("{TEMP_PREFIX}state-{tag}")), 0o700)?
            }
            None => TempDir::create(dir.file("state"), 0o700)?,
        };
        let mut header = server_header(&dir, &state.path, plan.realtime_priority, &plan.xdp_mode);
        let etcd = if plan.fleet {
            println!("load: --fleet: three etcd members; every knock is claimed in etcd");
            let etcd = EtcdCluster::start("ckloadetcd", 3)?;
            let link = etcd.attach(&server, 250)?;
            let endpoints: Vec<String> = etcd
                .endpoints(&link)
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect();
            header.push_str("\n[cluster]\nendpoints = [");
            header.push_str(&endpoints.join(", "));
            header.push_str("]\nnode = \"load\"\n");
            Some(etcd)
        } else {
            None
        };
        let users = Users::create(&UserSetup {
            bin,
            dir: &dir.path,
            server_header: &header,
            server_config: &dir.file("server.toml"),
            client_config: &dir.file("client.toml"),
            server_addr: SERVER_CLIENT_SIDE,
            service_port: SERVICE_PORT,
            access: ACCESS,
            count,
        })?;
        println!(
            "load: {} users in {:.1} s; {pool} client addresses",
            users.len(),
            t.elapsed().as_secs_f64()
        );
        let nft = NftWatch::start(&server)?;
        Ok(Self {
            bin: bin.to_owned(),
            nft,
            _service: service,
            server,
            client,
            attacker,
            sink,
            addrs,
            users,
            ksoftirqd: sample::ksoftirqd_pids(),
            calibration: Calibration::default(),
            _state: state,
            _etcd: etcd,
            dir,
        })
    }

    /// The daemon's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.file("control.sock")
    }
}

/// Links the namespaces (the diagram in the module doc), plus the sink's and the calibration
/// link's dead ends.
fn wire(server: &NetNs, client: &NetNs, attacker: &NetNs, sink: &NetNs) -> anyhow::Result<()> {
    veth(
        (server, "srv-c", IpAddr::V4(SERVER_CLIENT_SIDE)),
        (client, "cli", IpAddr::V4(CLIENT_V4)),
        16,
    )?;
    veth(
        (server, "srv-a", IpAddr::V4(SERVER_ATTACKER_SIDE)),
        (attacker, "att", IpAddr::V4(ATTACKER_V4)),
        24,
    )?;
    // The sink: its route to 10.98.0.0/16 leads to a veth peer that answers no ARP.
    veth_pair((sink, "snk0"), (sink, "snk1"))?;
    sink.add_address("snk0", IpAddr::V4(SINK_V4), 16)?;
    sink.link_up("snk0")?;
    sink.link_up("snk1")?;
    // The calibration link: cal0 in the attacker namespace, its peer cal1 (in the sink)
    // down, a fixed neighbour so nothing waits for ARP. What goes there is dropped at
    // cal0's own queue.
    veth_pair((attacker, "cal0"), (sink, "cal1"))?;
    attacker.add_address("cal0", IpAddr::V4(CALIBRATION_V4), 24)?;
    attacker.link_up("cal0")?;
    attacker.ip(&[
        "neigh",
        "replace",
        &CALIBRATION_PEER.to_string(),
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "cal0",
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// The server config before the users; keygen appends them. `realtime` sets
/// `realtime_priority` (`--realtime-priority`), `xdp_mode` the attach mode (`--xdp-mode`).
fn server_header(dir: &TempDir, state: &Path, realtime: Option<u8>, xdp_mode: &str) -> String {
    let comment = format!(
        "capyknock load benchmark server (cargo xtask load): everything lives in {}.",
        dir.path.display()
    );
    ServerToml {
        comment: Some(&comment),
        knock_port: KNOCK_PORT,
        interfaces: &["srv-c", "srv-a"],
        state_dir: state,
        control_socket: &dir.file("control.sock"),
        default_access: Some(ACCESS),
        extra: &format!(
            "xdp_mode = \"{xdp_mode}\"\n{}",
            realtime.map_or_else(String::new, |p| format!("realtime_priority = {p}\n"))
        ),
    }
    .render()
}

/// Writes the client's MAC for every client address into the server's neighbour table, so the
/// first reply to a fresh address does not wait for ARP (a real server talks to its gateway,
/// whose address it knows already).
fn pin_neighbours(server: &NetNs, client: &NetNs, addrs: &Addresses) -> anyhow::Result<()> {
    let link = client
        .ip(&["-o", "link", "show", "cli"])
        .context("cannot read the client's link")?;
    let link = String::from_utf8_lossy(&link.stdout);
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .context("the client's link has no MAC address")?
        .to_owned();
    let mut lines = String::new();
    for a in addrs.all().iter().chain(std::iter::once(&CLIENT_V4)) {
        let _ = writeln!(
            lines,
            "neigh replace {a} lladdr {mac} dev srv-c nud permanent"
        );
    }
    Ok(server.ip_batch(&lines)?)
}

/// Client addresses, handed out round-robin.
#[derive(Debug)]
pub struct Addresses {
    all: Vec<Ipv4Addr>,
    next: usize,
}

impl Addresses {
    /// `count` addresses `10.B.x.y` (x from 1, y 1 to 250) added to `ifname` in `ns` as /16.
    pub fn add(ns: &NetNs, ifname: &str, b: u8, count: usize) -> anyhow::Result<Self> {
        let all: Vec<Ipv4Addr> = (0..count)
            .map(|i| {
                let x = u8::try_from(1 + i / 250).unwrap_or(u8::MAX);
                let y = u8::try_from(1 + i % 250).unwrap_or(u8::MAX);
                Ipv4Addr::new(10, b, x, y)
            })
            .collect();
        let mut lines = String::new();
        for a in &all {
            let _ = writeln!(lines, "addr add {a}/16 dev {ifname}");
        }
        ns.ip_batch(&lines)?;
        Ok(Self { all, next: 0 })
    }

    /// Every address.
    pub fn all(&self) -> &[Ipv4Addr] {
        &self.all
    }

    /// The next address.
    pub fn next(&mut self) -> Ipv4Addr {
        let a = self
            .all
            .get(self.next)
            .copied()
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        self.next = (self.next + 1) % self.all.len().max(1);
        a
    }
}
