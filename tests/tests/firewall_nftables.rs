//! The nftables backend with real nftables and real TCP, in network namespaces (see
//! `capyknock_tests::firewall::Lab`): grants open the service for one address only, expire in
//! the kernel, refresh, keep established connections, lose to bans, work over IPv6, survive an
//! external `nft delete table` and a daemon restart, and never touch other tables. Needs root.
//!
//! Run: `cargo test -p capyknock-tests --test firewall_nftables -- --test-threads=1 --nocapture`
//! (`--nocapture` shows the measured latencies).
#![expect(clippy::unwrap_used, reason = "test code")]

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    thread::sleep,
    time::{Duration, Instant, SystemTime},
};

use capyknock::{
    firewall::{Firewall, FirewallConfig, FirewallKind, Health, PortGrant},
    ports::{PortSpec, Protocol},
};
use capyknock_testkit::KNOCK_PORT;
use capyknock_tests::firewall::{Lab, SERVICE_PORT, echo_ok};

fn config() -> FirewallConfig {
    FirewallConfig {
        backend: FirewallKind::Nftables,
        ..FirewallConfig::default()
    }
}

/// Opens the firewall inside the lab's server namespace (its netlink socket stays there).
fn open(lab: &Lab) -> Firewall {
    lab.server
        .run(|| {
            Firewall::open(
                &config(),
                &[PortSpec::tcp(SERVICE_PORT), PortSpec::udp(51820)],
                &[KNOCK_PORT],
                Path::new("/nonexistent-state-dir"),
            )
            .unwrap()
        })
        .unwrap()
}

fn grant(addr: IpAddr, until: SystemTime) -> PortGrant {
    PortGrant {
        addr,
        protocol: Protocol::Tcp,
        port: SERVICE_PORT,
        until,
        owner: Some(capyknock::firewall::Owner::new(
            capyknock::protocol::keys::UserId([1; 16]),
            "alice",
        )),
    }
}

fn in_secs(secs: f64) -> SystemTime {
    SystemTime::now() + Duration::from_secs_f64(secs)
}

#[test]
fn grant_opens_for_that_address_only_and_expires() {
    let lab = Lab::new("fwg");
    assert!(lab.c1_can_connect(lab.c1_v4()), "open before the firewall");
    let mut fw = open(&lab);
    assert_eq!(fw.name(), "nftables");
    assert!(!lab.c1_can_connect(lab.c1_v4()), "closed without a grant");
    assert!(!lab.c2_can_connect());

    let until = in_secs(2.0);
    let granted = fw.grant(&[grant(lab.c1_v4(), until)]).unwrap();
    assert_eq!(granted.applied.len(), 1);
    assert!(lab.c1_can_connect(lab.c1_v4()), "granted address gets in");
    assert!(!lab.c2_can_connect(), "another address stays out");
    assert!(
        !lab.c1_can_connect(lab.c1_v6()),
        "the grant is for the IPv4 address only"
    );

    let now = SystemTime::now();
    sleep(until.duration_since(now).unwrap_or_default() + Duration::from_millis(300));
    assert!(!lab.c1_can_connect(lab.c1_v4()), "closed after expiry");
    // The daemon's tick forgets it; nothing to repair.
    assert_eq!(fw.check_and_repair().unwrap(), Health::Intact);
    assert!(fw.grants().is_empty());
}

#[test]
fn refresh_extends() {
    let lab = Lab::new("fwr");
    let mut fw = open(&lab);
    let start = Instant::now();
    fw.grant(&[grant(lab.c1_v4(), in_secs(2.0))]).unwrap();
    sleep(Duration::from_secs(1));
    // A repeat knock one second later, for another 3 s.
    let g = fw.grant(&[grant(lab.c1_v4(), in_secs(3.0))]).unwrap();
    assert_eq!(g.applied.len(), 1);
    sleep(Duration::from_millis(2500).saturating_sub(start.elapsed()));
    assert!(
        lab.c1_can_connect(lab.c1_v4()),
        "still open after the first grant's end"
    );
    sleep(Duration::from_millis(4300).saturating_sub(start.elapsed()));
    assert!(
        !lab.c1_can_connect(lab.c1_v4()),
        "closed after the refreshed end"
    );
}

#[test]
fn established_connection_survives_expiry() {
    let lab = Lab::new("fwe");
    let mut fw = open(&lab);
    fw.grant(&[grant(lab.c1_v4(), in_secs(1.5))]).unwrap();
    let mut conn =
        capyknock_tests::firewall::connect(&lab.c1, lab.server_for_c1(lab.c1_v4()), SERVICE_PORT)
            .expect("connect while granted");
    assert!(echo_ok(&mut conn));
    sleep(Duration::from_secs(2));
    assert!(!lab.c1_can_connect(lab.c1_v4()), "no new connections");
    assert!(echo_ok(&mut conn), "the open session keeps working");
}

#[test]
fn ban_blocks_a_granted_address() {
    let lab = Lab::new("fwb");
    let mut fw = open(&lab);
    fw.grant(&[grant(lab.c1_v4(), in_secs(60.0))]).unwrap();
    let mut conn =
        capyknock_tests::firewall::connect(&lab.c1, lab.server_for_c1(lab.c1_v4()), SERVICE_PORT)
            .unwrap();
    assert!(echo_ok(&mut conn));

    fw.ban(lab.c1_v4(), None).unwrap();
    assert!(fw.is_banned(lab.c1_v4()));
    assert!(!lab.c1_can_connect(lab.c1_v4()), "banned despite the grant");
    assert!(!echo_ok(&mut conn), "a ban also cuts open sessions");
    // A banned address gets no new grants.
    let g = fw.grant(&[grant(lab.c1_v4(), in_secs(60.0))]).unwrap();
    assert!(g.applied.is_empty());
    assert_eq!(g.refused_banned.len(), 1);

    fw.unban(lab.c1_v4()).unwrap();
    assert!(lab.c1_can_connect(lab.c1_v4()), "the grant applies again");

    // A timed ban ends by itself in the kernel.
    fw.ban(lab.c1_v4(), Some(in_secs(1.5))).unwrap();
    assert!(!lab.c1_can_connect(lab.c1_v4()));
    sleep(Duration::from_secs(2));
    assert!(lab.c1_can_connect(lab.c1_v4()), "the timed ban expired");
}

#[test]
fn ipv6_grants() {
    let lab = Lab::new("fw6");
    let mut fw = open(&lab);
    assert!(!lab.c1_can_connect(lab.c1_v6()));
    fw.grant(&[grant(lab.c1_v6(), in_secs(30.0))]).unwrap();
    assert!(lab.c1_can_connect(lab.c1_v6()), "IPv6 grant opens");
    assert!(!lab.c1_can_connect(lab.c1_v4()), "but not the IPv4 address");
    fw.ban(lab.c1_v6(), None).unwrap();
    assert!(!lab.c1_can_connect(lab.c1_v6()), "IPv6 ban");
    fw.unban(lab.c1_v6()).unwrap();
    assert_eq!(fw.revoke(lab.c1_v6()).unwrap(), 1);
    assert!(!lab.c1_can_connect(lab.c1_v6()), "revoked");
}

#[test]
fn deleted_table_is_restored_with_its_grants() {
    let lab = Lab::new("fwd");
    let mut fw = open(&lab);
    fw.grant(&[grant(lab.c1_v4(), in_secs(60.0))]).unwrap();
    fw.ban(lab.c2_v4(), None).unwrap();
    assert_eq!(fw.check_and_repair().unwrap(), Health::Intact);

    lab.nft(&["delete", "table", "inet", "capyknock"]);
    assert!(
        lab.c2_can_connect(),
        "without our table nothing is filtered"
    );
    assert_eq!(fw.check_and_repair().unwrap(), Health::Restored);
    assert!(!lab.c2_can_connect(), "restored, with the ban");
    assert!(lab.c1_can_connect(lab.c1_v4()), "restored, with the grant");

    // A rule deleted by hand is also noticed and put back.
    let listing = lab.nft(&["-a", "list", "chain", "inet", "capyknock", "guard"]);
    let handle = listing
        .lines()
        .find(|l| l.contains("ct state"))
        .and_then(|l| l.rsplit("handle ").next())
        .unwrap()
        .trim()
        .to_owned();
    lab.nft(&[
        "delete",
        "rule",
        "inet",
        "capyknock",
        "guard",
        "handle",
        &handle,
    ]);
    assert_eq!(fw.check_and_repair().unwrap(), Health::Restored);
    assert_eq!(fw.check_and_repair().unwrap(), Health::Intact);
}

#[test]
fn restart_keeps_grants_and_their_timeouts() {
    let lab = Lab::new("fwt");
    let until = in_secs(3.0);
    {
        let mut fw = open(&lab);
        fw.grant(&[grant(lab.c1_v4(), until)]).unwrap();
        fw.ban(lab.c2_v4(), Some(in_secs(60.0))).unwrap();
    } // "daemon" stops: the table and its elements stay.
    sleep(Duration::from_secs(1));
    assert!(lab.c1_can_connect(lab.c1_v4()), "open while no daemon runs");

    let fw = open(&lab);
    let grants = fw.grants();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].addr, lab.c1_v4());
    // Who the grant is for comes back with it (kept as the element's comment).
    assert_eq!(
        grants[0].owner.map(|o| o.nickname().to_owned()).as_deref(),
        Some("alice"),
        "{grants:?}"
    );
    assert!(
        lab.nft(&["list", "set", "inet", "capyknock", "allow4"])
            .contains("comment \"capyknock:"),
        "the owner is visible in `nft list`"
    );
    let drift = match grants[0].until.duration_since(until) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(
        drift < Duration::from_millis(200),
        "remaining time kept ({drift:?} off)"
    );
    assert_eq!(fw.bans().len(), 1);
    assert!(
        lab.c1_can_connect(lab.c1_v4()),
        "still open after the restart"
    );
    assert!(!lab.c2_can_connect(), "still banned after the restart");
    sleep(until.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(300));
    assert!(
        !lab.c1_can_connect(lab.c1_v4()),
        "closes at the original time"
    );
}

#[test]
fn changed_settings_rebuild_the_table_and_keep_grants() {
    let lab = Lab::new("fwp");
    let mut fw = open(&lab);
    fw.grant(&[grant(lab.c1_v4(), in_secs(60.0))]).unwrap();
    fw.ban(lab.c2_v4(), None).unwrap();
    drop(fw);
    // A reload with another chain priority and another protected port set: the hook cannot be
    // changed in place, so the table is recreated, with the grant and the ban.
    let fw = lab
        .server
        .run(|| {
            let config = FirewallConfig {
                priority: 5,
                ..config()
            };
            Firewall::open(
                &config,
                &[PortSpec::tcp(SERVICE_PORT)],
                &[],
                Path::new("/nonexistent-state-dir"),
            )
            .unwrap()
        })
        .unwrap();
    assert_eq!(fw.grants().len(), 1);
    assert_eq!(fw.bans().len(), 1);
    let listing = lab.nft(&["list", "chain", "inet", "capyknock", "input"]);
    assert!(listing.contains("priority filter + 5"), "{listing}");
    assert!(!listing.contains("51820"), "old port rule gone: {listing}");
    assert!(!listing.contains(&KNOCK_PORT.to_string()), "{listing}");
    assert!(lab.c1_can_connect(lab.c1_v4()), "grant kept");
    assert!(!lab.c2_can_connect(), "ban kept");
}

#[test]
fn other_tables_are_untouched() {
    let lab = Lab::new("fwo");
    lab.nft(&["add", "table", "inet", "other"]);
    lab.nft(&["add chain inet other input { type filter hook input priority 10; policy accept; }"]);
    lab.nft(&["add set inet other s { type ipv4_addr; flags timeout; }"]);
    lab.nft(&["add element inet other s { 10.9.9.9 timeout 1h }"]);
    lab.nft(&["add rule inet other input tcp dport 9999 counter accept"]);
    // Same name, other family: not ours.
    lab.nft(&["add table ip capyknock"]);
    lab.nft(&["add chain ip capyknock keep"]);
    let snapshot = || {
        let other = lab.nft(&["list", "table", "inet", "other"]);
        let other = other
            .lines()
            .map(|l| l.split(" expires ").next().unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        (other, lab.nft(&["list", "table", "ip", "capyknock"]))
    };
    let before = snapshot();

    let mut fw = open(&lab);
    fw.grant(&[grant(lab.c1_v4(), in_secs(30.0))]).unwrap();
    fw.ban(lab.c2_v4(), None).unwrap();
    fw.unban(lab.c2_v4()).unwrap();
    fw.revoke(lab.c1_v4()).unwrap();
    fw.check_and_repair().unwrap();
    assert_eq!(snapshot(), before, "after our operations");
    drop(fw);
    let mut fw = open(&lab);
    fw.remove_all().unwrap();
    assert_eq!(snapshot(), before, "after remove_all");
    let tables = lab.nft(&["list", "tables"]);
    assert!(
        !tables.contains("inet capyknock"),
        "our table is gone: {tables}"
    );
    assert!(lab.c2_can_connect(), "nothing filters any more");
}

#[test]
fn knock_port_udp_is_dropped() {
    let lab = Lab::new("fwk");
    let server = lab
        .server
        .run(|| {
            let s = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, KNOCK_PORT))).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        })
        .unwrap();
    let send = || {
        let dst = SocketAddr::new(lab.server_for_c1(lab.c1_v4()), KNOCK_PORT);
        lab.c1
            .run(|| {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.send_to(b"knock", dst).unwrap();
            })
            .unwrap();
        let mut buf = [0u8; 16];
        server.recv_from(&mut buf).is_ok()
    };
    assert!(send(), "delivered before the firewall");
    let _fw = open(&lab);
    assert!(!send(), "dropped by our knock-port rule");
}

#[test]
fn cli_firewall_remove() {
    let lab = Lab::new("fwc");
    drop(open(&lab));
    assert!(lab.nft(&["list", "tables"]).contains("inet capyknock"));
    let run = || {
        let out = lab
            .server
            .command(capyknock_tests::capyknock_bin())
            .args(["firewall", "remove"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run();
    assert!(!lab.nft(&["list", "tables"]).contains("inet capyknock"));
    let second = run();
    assert_ne!(first, second, "says whether there was anything to remove");
}

/// Measures what docs/FIREWALL.md quotes: `grant()` latency, time from `grant()` to a connection
/// getting through, and grants per second in one batch.
#[test]
fn measure_latency_and_batch_rate() {
    let lab = Lab::new("fwm");
    let mut fw = open(&lab);

    // Single grants, one batch each.
    let mut lat = Vec::new();
    for i in 0..500u32 {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 + i));
        let t = Instant::now();
        fw.grant(&[grant(addr, in_secs(60.0))]).unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    let median = lat[lat.len() / 2];
    let p99 = lat[lat.len() * 99 / 100];

    // grant() until a new TCP handshake completes (the first attempt after grant returns;
    // the client thread is already in its namespace, so this is grant + one handshake).
    let server = SocketAddr::new(lab.server_for_c1(lab.c1_v4()), SERVICE_PORT);
    let mut effect = Vec::new();
    for _ in 0..20 {
        fw.revoke(lab.c1_v4()).unwrap();
        let (granted, through) = lab
            .c1
            .run(|| {
                let t = Instant::now();
                fw.grant(&[grant(lab.c1_v4(), in_secs(60.0))]).unwrap();
                let granted = t.elapsed();
                let conn = TcpStream::connect_timeout(&server, Duration::from_millis(400));
                assert!(
                    conn.is_ok(),
                    "the first connection after grant() returned must pass"
                );
                (granted, t.elapsed())
            })
            .unwrap();
        effect.push((granted, through));
    }
    let (g, e) = effect[effect.len() / 2];

    // Big batches.
    let mut rates = Vec::new();
    for n in [1_000u32, 10_000, 50_000] {
        let batch: Vec<PortGrant> = (0..n)
            .map(|i| grant(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), in_secs(60.0)))
            .collect();
        let t = Instant::now();
        let applied = fw.grant(&batch).unwrap().applied.len();
        let took = t.elapsed();
        assert_eq!(applied, n as usize);
        rates.push((n, took, f64::from(n) / took.as_secs_f64()));
        fw.remove_all().unwrap();
        fw = open(&lab);
    }
    eprintln!("grant() of one grant: median {median:?}, p99 {p99:?} (500 runs)");
    eprintln!("grant() returned after {g:?}; first connection through after {e:?} (median of 20)");
    for (n, took, rate) in &rates {
        eprintln!("batch of {n} grants: {took:?} = {rate:.0} grants/s");
    }
    assert!(
        median < Duration::from_millis(20),
        "single grants too slow: {median:?}"
    );
    assert!(
        rates.iter().all(|(_, _, r)| *r > 5_000.0),
        "batches too slow: {rates:?}"
    );
}
