//! The exec backend end to end, in network namespaces with real TCP: its templates drive `nft`
//! on a table the "admin" made (as they would drive pf, firewalld or ipset), and the daemon's
//! own timer closes grants, also across a restart (ledger in the state directory). Needs root.
//!
//! Commands run from a thread inside the server namespace, so they act on that namespace only.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    thread::sleep,
    time::{Duration, SystemTime},
};

use capyknock::{
    firewall::{ExecConfig, Firewall, FirewallConfig, FirewallKind, PortGrant, exec::Template},
    ports::{PortSpec, Protocol},
};
use capyknock_tests::firewall::{Lab, SERVICE_PORT};

/// A state directory removed on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ck-exec-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Templates for an admin-made nftables table. The element timeout is an hour on purpose: only
/// capyknock's `close` ends a grant here, which is what this test checks.
fn config() -> FirewallConfig {
    let t = |args: &[&str]| Template::try_from(strings(args)).unwrap();
    let exec = ExecConfig {
        open: t(&[
            "nft",
            "add element inet admin allow {{ {addr} . {proto} . {port} timeout 1h }}",
        ]),
        close: t(&[
            "nft",
            "delete element inet admin allow {{ {addr} . {proto} . {port} }}",
        ]),
        ban: Some(t(&["nft", "add element inet admin banned {{ {addr} }}"])),
        unban: Some(t(&["nft", "delete element inet admin banned {{ {addr} }}"])),
        knock_drop: None,
        knock_undrop: None,
        knock_drop_in_ruleset: true,
        timeout: Duration::from_secs(3),
    };
    FirewallConfig {
        backend: FirewallKind::Exec,
        exec: Some(exec),
        ..FirewallConfig::default()
    }
}

fn admin_table(lab: &Lab) {
    lab.nft(&["add table inet admin"]);
    lab.nft(&[
        "add set inet admin allow { type ipv4_addr . inet_proto . inet_service; flags timeout; }",
    ]);
    lab.nft(&["add set inet admin banned { type ipv4_addr; }"]);
    lab.nft(&["add chain inet admin input { type filter hook input priority 0; policy accept; }"]);
    lab.nft(&[&format!(
        "add rule inet admin input tcp dport {SERVICE_PORT} ip saddr @banned drop"
    )]);
    lab.nft(&[&format!(
        "add rule inet admin input tcp dport {SERVICE_PORT} ip saddr . meta l4proto . tcp dport @allow accept"
    )]);
    lab.nft(&[&format!(
        "add rule inet admin input tcp dport {SERVICE_PORT} drop"
    )]);
}

fn open(lab: &Lab, state: &Path) -> Firewall {
    open_with(lab, &config(), state)
}

fn open_with(lab: &Lab, config: &FirewallConfig, state: &Path) -> Firewall {
    lab.server
        .run(|| Firewall::open(config, &[PortSpec::tcp(SERVICE_PORT)], &[], state).unwrap())
        .unwrap()
}

fn grant(addr: IpAddr, secs: u64) -> PortGrant {
    PortGrant {
        addr,
        protocol: Protocol::Tcp,
        port: SERVICE_PORT,
        until: SystemTime::now() + Duration::from_secs(secs),
        owner: None,
    }
}

#[test]
fn exec_grants_expire_on_the_daemon_timer_and_across_restarts() {
    let lab = Lab::new("fxe");
    let state = StateDir::new("a");
    admin_table(&lab);
    assert!(!lab.c1_can_connect(lab.c1_v4()));

    let mut fw = open(&lab, &state.0);
    assert_eq!(fw.name(), "exec");
    lab.server
        .run(|| fw.grant(&[grant(lab.c1_v4(), 2)]).unwrap())
        .unwrap();
    assert!(lab.c1_can_connect(lab.c1_v4()), "open ran");
    assert!(!lab.c2_can_connect());
    let ledger = state.0.join("firewall-exec.json");
    assert!(ledger.exists(), "ledger persisted");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&ledger).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    sleep(Duration::from_millis(2300));
    assert!(
        lab.c1_can_connect(lab.c1_v4()),
        "nothing closes it but the daemon"
    );
    lab.server.run(|| fw.check_and_repair().unwrap()).unwrap();
    assert!(!lab.c1_can_connect(lab.c1_v4()), "close ran on expiry");

    // Restart: a grant that expires while the daemon is down is closed when it starts again.
    lab.server
        .run(|| fw.grant(&[grant(lab.c1_v4(), 2)]).unwrap())
        .unwrap();
    drop(fw);
    sleep(Duration::from_millis(2300));
    assert!(lab.c1_can_connect(lab.c1_v4()), "still open while down");
    let mut fw = open(&lab, &state.0);
    assert!(
        !lab.c1_can_connect(lab.c1_v4()),
        "closed at start-up from the ledger"
    );
    assert!(fw.grants().is_empty());

    // Bans through the ban/unban templates.
    lab.server
        .run(|| {
            fw.grant(&[grant(lab.c1_v4(), 60)]).unwrap();
            fw.ban(lab.c1_v4(), None).unwrap();
        })
        .unwrap();
    assert!(!lab.c1_can_connect(lab.c1_v4()), "banned");
    lab.server.run(|| fw.unban(lab.c1_v4()).unwrap()).unwrap();
    assert!(lab.c1_can_connect(lab.c1_v4()), "unbanned, grant applies");

    // A failing command is an error with the program's stderr; the grant stays in the ledger
    // (part of a change may have been applied), so its `close` runs at its end.
    lab.nft(&["delete table inet admin"]);
    let err = lab
        .server
        .run(|| fw.grant(&[grant(lab.c2_v4(), 60)]))
        .unwrap()
        .unwrap_err();
    let msg = capyknock::firewall::ErrorChain(&err).to_string();
    assert!(msg.contains("nft"), "{msg}");
    assert_eq!(fw.grants().len(), 2, "kept so that it is closed at its end");
}

#[test]
fn exec_without_ban_commands_closes_the_banned_address_grants() {
    let lab = Lab::new("fxb");
    let state = StateDir::new("b");
    admin_table(&lab);
    let mut config = config();
    if let Some(exec) = config.exec.as_mut() {
        exec.ban = None;
        exec.unban = None;
    }
    let mut fw = open_with(&lab, &config, &state.0);
    lab.server
        .run(|| {
            fw.grant(&[grant(lab.c1_v4(), 60)]).unwrap();
        })
        .unwrap();
    assert!(lab.c1_can_connect(lab.c1_v4()));
    lab.server
        .run(|| fw.ban(lab.c1_v4(), None).unwrap())
        .unwrap();
    assert!(!lab.c1_can_connect(lab.c1_v4()), "grants closed by the ban");
    let g = lab
        .server
        .run(|| fw.grant(&[grant(lab.c1_v4(), 60)]).unwrap())
        .unwrap();
    assert!(g.applied.is_empty(), "no new grant while banned");
}

/// The ipset + iptables worked example of docs/FIREWALL.md, exactly as shipped in
/// contrib/exec (set-up script and config), with real TCP. Needs `ipset` and `iptables`.
#[test]
fn contrib_ipset_example_works() {
    for tool in ["ipset", "iptables", "ip6tables"] {
        assert!(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: apt-get install ipset iptables (cargo xtask setup does)"
        );
    }
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/exec");
    let lab = Lab::new("fxi");
    let state = StateDir::new("i");
    capyknock_testkit::process::run(
        lab.server
            .command("sh")
            .arg(contrib.join("ipset-setup.sh"))
            .arg(SERVICE_PORT.to_string()),
    )
    .unwrap();
    assert!(!lab.c1_can_connect(lab.c1_v4()), "closed by the set-up");
    let text = std::fs::read_to_string(contrib.join("ipset.toml")).unwrap();
    let config = FirewallConfig::from_config_text(&text).unwrap();
    let mut fw = open_with(&lab, &config, &state.0);
    lab.server
        .run(|| {
            fw.grant(&[grant(lab.c1_v4(), 2), grant(lab.c1_v6(), 60)])
                .unwrap();
        })
        .unwrap();
    assert!(lab.c1_can_connect(lab.c1_v4()), "ipset grant (IPv4)");
    assert!(lab.c1_can_connect(lab.c1_v6()), "ipset grant (IPv6)");
    assert!(!lab.c2_can_connect(), "others stay out");
    // ipset's own timeout closes it, even without the daemon's timer.
    sleep(Duration::from_millis(2500));
    assert!(!lab.c1_can_connect(lab.c1_v4()), "expired in ipset");
    // Refresh and ban.
    lab.server
        .run(|| {
            fw.grant(&[grant(lab.c1_v4(), 60)]).unwrap();
            fw.grant(&[grant(lab.c1_v4(), 120)]).unwrap();
        })
        .unwrap();
    let list = String::from_utf8_lossy(
        &capyknock_testkit::process::run(lab.server.command("ipset").args(["list", "capyknock4"]))
            .unwrap()
            .stdout,
    )
    .into_owned();
    // The element's seconds left: 120 when listed within the second it was set, a little
    // less after (a grant of 60 s would show at most 60).
    let left: Option<u32> = list
        .lines()
        .find(|l| l.contains(",tcp:"))
        .and_then(|l| l.split("timeout ").nth(1))
        .and_then(|t| t.trim().parse().ok());
    assert!(
        left.is_some_and(|s| (100..=120).contains(&s)),
        "refreshed to ~120 s: {list}"
    );
    lab.server
        .run(|| fw.ban(lab.c1_v4(), None).unwrap())
        .unwrap();
    assert!(!lab.c1_can_connect(lab.c1_v4()), "banned");
    lab.server.run(|| fw.unban(lab.c1_v4()).unwrap()).unwrap();
    assert!(lab.c1_can_connect(lab.c1_v4()), "unbanned");
    lab.server.run(|| fw.revoke(lab.c1_v6()).unwrap()).unwrap();
    assert!(!lab.c1_can_connect(lab.c1_v6()), "revoked");
}
