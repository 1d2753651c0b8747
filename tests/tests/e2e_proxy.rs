//! `capyknock knock %h --port %p --proxy` as ssh runs it: the profile is found by the host, the
//! knock opens the port, then stdin/stdout are relayed to the service both ways, with
//! half-close (the client's EOF reaches the service, which answers and closes; the relay then
//! ends). A second session finds the port open and needs no code. Needs root.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use capyknock_testkit::clock::{unix_now, wait_for_fresh_step};
use capyknock_tests::e2e::{BANNER, Lab, SERVICE_PORT};

/// Runs one proxy session: reads the banner, sends `payload`, closes stdin, and returns what
/// came back after the banner line, the exit status and stderr.
fn session(lab: &Lab, host: &str, otp: Option<&str>, payload: &[u8]) -> (Vec<u8>, i32, String) {
    let mut cmd: Command = lab.client.command(capyknock_tests::capyknock_bin());
    cmd.args([
        "knock",
        host,
        "--port",
        &SERVICE_PORT.to_string(),
        "--proxy",
    ])
    .arg("--client-config")
    .arg(lab.client_config());
    if let Some(code) = otp {
        cmd.args(["--otp", code]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    assert_eq!(banner.trim_end(), BANNER, "no banner through the relay");
    // Write from another thread while reading: the echo comes back while we still send.
    let mut stdin = child.stdin.take().unwrap();
    let data = payload.to_vec();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&data).unwrap();
        // Dropping stdin is the client's EOF: the relay half-closes towards the service.
    });
    let mut back = Vec::new();
    stdout.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not exit after both EOFs"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (back, status.code().unwrap_or(-1), err)
}

#[test]
fn proxy_knocks_then_relays_both_ways() {
    let mut lab = Lab::new("prx");
    let server_ip = IpAddr::V4(lab.client_link.a_v4);
    let alice = lab.keygen("alice", "work", &server_ip.to_string(), &[]);
    lab.start_daemon();
    assert_eq!(Lab::probe(&lab.client, server_ip, SERVICE_PORT), None);

    wait_for_fresh_step(8);
    let code = alice.code_at(unix_now());
    // ssh passes %h, the host: the profile is found by its server.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (back, status, err) = session(&lab, &server_ip.to_string(), Some(code.as_str()), &payload);
    assert_eq!(status, 0, "proxy failed:\n{err}");
    assert_eq!(back.len(), payload.len(), "echo incomplete:\n{err}");
    assert!(back == payload, "echo differs");
    assert!(err.contains("knock sent"), "{err}");

    // Second session (ssh reconnecting): the port is open, no code is asked for.
    let (back, status, err) = session(&lab, &server_ip.to_string(), None, b"again\n");
    assert_eq!(status, 0, "{err}");
    assert_eq!(back, b"again\n");
    assert!(err.contains("already open"), "{err}");
    assert_eq!(lab.status().verifier.accepted, 1);
}
