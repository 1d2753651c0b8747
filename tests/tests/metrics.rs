//! The metrics endpoint (`metrics_listen`) of the real daemon (XDP + nftables) in a network
//! namespace, scraped with a real HTTP client (curl, run inside the server namespace) on the
//! loopback address and on a Unix socket: the counters, the grant count and the latency
//! histogram move as knocks happen, and nothing but `GET /metrics` is served.
//! Needs root and curl. Run: `cargo test -p capyknock-tests --test metrics -- --test-threads=1`.

use std::{collections::BTreeMap, net::IpAddr, os::unix::fs::PermissionsExt as _, time::Duration};

use capyknock::server::control::Request;
use capyknock_testkit::{clock::unix_now, clock::wait_into_step, wait::wait_until};
use capyknock_tests::daemon::{DaemonLab, SERVICE, knock, knock_with_code, user, wrong_code};

/// The loopback port the endpoint listens on (inside the test's own namespace).
const PORT: u16 = 9184;

/// One HTTP exchange as curl saw it.
#[derive(Debug)]
struct Reply {
    status_line: String,
    headers: String,
    body: String,
}

impl Reply {
    /// Every sample line of the body, series (name and labels) to value.
    fn samples(&self) -> BTreeMap<String, f64> {
        self.body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// The value of `series` as a count (a whole number); panics when it is missing.
    #[expect(
        clippy::cast_sign_loss,
        reason = "checked: a non-negative whole number"
    )]
    fn count(&self, series: &str) -> u64 {
        let v = self.value(series);
        assert!(
            v >= 0.0 && v.fract() == 0.0,
            "{series} = {v} is not a count"
        );
        v as u64
    }

    /// The value of `series`; panics when it is missing.
    fn value(&self, series: &str) -> f64 {
        self.samples()
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("no {series} in\n{}", self.body))
    }
}

/// Runs curl in the server namespace with `args` (the URL or socket among them).
fn curl(lab: &DaemonLab, args: &[&str]) -> Reply {
    let out = lab
        .server
        .command("curl")
        .args([
            "--silent",
            "--show-error",
            "--http1.1",
            "--max-time",
            "5",
            "--include",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl (apt-get install curl): {e}"));
    assert!(
        out.status.success(),
        "curl {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (headers, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    Reply {
        status_line: headers.lines().next().unwrap_or_default().to_owned(),
        headers: headers.to_owned(),
        body: body.to_owned(),
    }
}

fn scrape_tcp(lab: &DaemonLab, path: &str) -> Reply {
    curl(lab, &[&format!("http://127.0.0.1:{PORT}{path}")])
}

/// Scrapes (with `scrape`) until `done` holds for a reply (up to 5 s: the pre-filter counters
/// are copied once a second); returns that reply.
fn scrape_until(scrape: impl Fn() -> Reply, what: &str, done: impl Fn(&Reply) -> bool) -> Reply {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
        let r = scrape();
        let ok = done(&r);
        last = Some(r);
        Ok(ok)
    })
    .unwrap();
    let last = last.unwrap_or_else(|| panic!("no scrape"));
    assert!(ok, "{what}: not seen within 5 s in\n{}", last.body);
    last
}

/// Over TCP on 127.0.0.1: every counter starts at zero, then a junk datagram, a knock with a
/// wrong code and a valid knock move the pre-filter, rejection, grant and latency metrics; a
/// ban moves the ban metrics. Only /metrics is served, and only on loopback.
#[test]
fn a_scrape_shows_knocks_grants_and_bans_as_they_happen() {
    let mut lab = DaemonLab::new("dmt");
    let alice = user("alice", 1);
    lab.server_extra = format!("metrics_listen = \"127.0.0.1:{PORT}\"\n");
    lab.write_config(&[&alice]);
    lab.start();
    lab.wait_log(&[
        "capyknock daemon ready",
        &format!("metrics=127.0.0.1:{PORT}"),
    ]);

    let before = scrape_until(
        || scrape_tcp(&lab, "/metrics"),
        "the first pre-filter copy",
        |r| {
            r.samples()
                .contains_key("capyknock_prefilter_frames_total{verdict=\"wrong_size\"}")
        },
    );
    assert_eq!(before.status_line, "HTTP/1.1 200 OK", "{}", before.headers);
    assert!(
        before
            .headers
            .contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{}",
        before.headers
    );
    assert!(before.body.ends_with("# EOF\n"), "{}", before.body);
    for series in [
        "capyknock_grants_total",
        "capyknock_knocks_accepted_total",
        "capyknock_knocks_rejected_total{reason=\"bad_totp\"}",
        "capyknock_knock_to_firewall_seconds_count",
        "capyknock_bans_total",
        "capyknock_bans_active",
        "capyknock_ring_buffer_drops_total",
    ] {
        assert_eq!(before.count(series), 0, "{series}");
    }
    let wrong_size = "capyknock_prefilter_frames_total{verdict=\"wrong_size\"}";
    let delivered = "capyknock_prefilter_frames_total{verdict=\"delivered\"}";
    let junk_before = before.count(wrong_size);

    wait_into_step(4, 12);
    let t = unix_now();
    // Junk: dropped in the kernel, counted by the pre-filter only.
    lab.send(&[0u8; 40], false, 1);
    // A knock with a wrong code: through the pre-filter, refused by the verifier.
    lab.send(
        &knock_with_code(&alice, &[SERVICE], t, &wrong_code(&alice, t)),
        false,
        1,
    );
    lab.wait_log(&["knock rejected", "reason=bad_totp"]);
    // A valid knock: granted.
    lab.send(&knock(&alice, &[SERVICE], t), false, 1);
    lab.wait_connect(SERVICE.port, false, true);

    let after = scrape_until(
        || scrape_tcp(&lab, "/metrics"),
        "the junk datagram and the grant",
        |r| r.count(wrong_size) > junk_before && r.count("capyknock_grants_total") >= 1,
    );
    assert_eq!(after.count(wrong_size), junk_before + 1);
    assert!(after.count(delivered) >= 2, "{}", after.body);
    assert_eq!(after.count("capyknock_knocks_accepted_total"), 1);
    assert_eq!(after.count("capyknock_grants_total"), 1);
    assert_eq!(
        after.count("capyknock_knocks_rejected_total{reason=\"bad_totp\"}"),
        1
    );
    assert_eq!(after.count("capyknock_knock_to_firewall_seconds_count"), 1);
    let latency = after.value("capyknock_knock_to_firewall_seconds_sum");
    assert!(latency > 0.0 && latency < 2.0, "latency {latency}");
    assert_eq!(
        after.count("capyknock_knock_to_firewall_seconds_bucket{le=\"+Inf\"}"),
        1
    );
    assert!(
        after.value("capyknock_grants_active") >= 1.0,
        "{}",
        after.body
    );

    // A ban is counted and shows as active.
    let banned: IpAddr = "192.0.2.7".parse().unwrap();
    let r = lab.request(&Request::Ban {
        addr: banned,
        duration_secs: None,
    });
    assert!(r.ok, "{r:?}");
    let bans = scrape_tcp(&lab, "/metrics");
    assert_eq!(bans.count("capyknock_bans_total"), 1);
    assert_eq!(bans.count("capyknock_bans_active"), 1);

    only_metrics_and_only_on_loopback(&lab);
    assert!(lab.stop(), "daemon did not exit cleanly");
}

/// Nothing but `GET /metrics` is served, and only on loopback: the server's own address on the
/// link does not answer.
fn only_metrics_and_only_on_loopback(lab: &DaemonLab) {
    // Nothing else is served.
    let other = scrape_tcp(lab, "/");
    assert!(other.status_line.starts_with("HTTP/1.1 404"), "{other:?}");
    let post = curl(
        lab,
        &["-X", "POST", &format!("http://127.0.0.1:{PORT}/metrics")],
    );
    assert!(post.status_line.starts_with("HTTP/1.1 405"), "{post:?}");

    // Only on loopback: the server's own address on the link does not answer.
    let out = lab
        .server
        .command("curl")
        .args(["--silent", "--max-time", "3"])
        .arg(format!("http://{}:{PORT}/metrics", lab.server_addr(false)))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the endpoint answered off loopback");
}

/// On a Unix socket (mode 0660, removed at exit): a refused knock shows in the next scrape.
#[test]
fn the_unix_socket_serves_the_same_metrics() {
    let mut lab = DaemonLab::new("dmu");
    let alice = user("alice", 1);
    let socket = lab.file("metrics.sock");
    lab.server_extra = format!("metrics_listen = \"unix:{}\"\n", socket.display());
    lab.write_config(&[&alice]);
    lab.start();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
    let path = socket.to_str().unwrap().to_owned();
    let scrape = || curl(&lab, &["--unix-socket", &path, "http://localhost/metrics"]);
    let rejected = "capyknock_knocks_rejected_total{reason=\"bad_totp\"}";
    assert_eq!(scrape().count(rejected), 0);

    wait_into_step(4, 12);
    let t = unix_now();
    lab.send(
        &knock_with_code(&alice, &[SERVICE], t, &wrong_code(&alice, t)),
        false,
        1,
    );
    lab.wait_log(&["knock rejected", "reason=bad_totp"]);
    let after = scrape_until(scrape, "the refused knock", |r| r.count(rejected) >= 1);
    assert_eq!(after.count(rejected), 1);
    assert_eq!(after.count("capyknock_grants_total"), 0);

    assert!(lab.stop(), "daemon did not exit cleanly");
    assert!(!socket.exists(), "the metrics socket outlived the daemon");
}
