//! `capyknock knock` through the binary on the loopback interface, without a daemon: every
//! documented exit status (0 already open, 2 configuration, 3 resolve, 4 still closed, 5 no
//! code), the knock packets leaving as UDP datagrams of the protocol's size, and `--proxy`
//! relaying to an already open port. No root needed.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use capyknock_common::wire::KNOCK_LEN;
use capyknock_testkit::process::{output_text as text, run_with_stdin};
use capyknock_tests::capyknock_bin;

/// A client config with one profile for 127.0.0.1 asking for tcp/`port`, knock port
/// `knock_port`, made by keygen.
fn profile(dir: &Path, server: &str, port: u16, knock_port: u16) {
    let out = Command::new(capyknock_bin())
        .args(["keygen", "--nickname", "alice", "--profile", "p", "--no-qr"])
        .args(["--server", server, "--ports", &port.to_string()])
        .args(["--knock-port", &knock_port.to_string()])
        .arg("--server-config")
        .arg(dir.join("server.toml"))
        .arg("--client-config")
        .arg(dir.join("client.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

fn knock(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut cmd = Command::new(capyknock_bin());
    cmd.arg("knock")
        .args(args)
        .arg("--client-config")
        .arg(dir.join("client.toml"));
    run_with_stdin(&mut cmd, stdin).unwrap()
}

/// A TCP port on loopback with nothing listening (connections are refused).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn already_open_exits_0_without_a_code() {
    let dir = tempfile::tempdir().unwrap();
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let knock_rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    knock_rx.set_nonblocking(true).unwrap();
    let port = service.local_addr().unwrap().port();
    profile(
        dir.path(),
        "127.0.0.1",
        port,
        knock_rx.local_addr().unwrap().port(),
    );
    let out = knock(dir.path(), &["p"], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("already open"), "{}", text(&out));
    assert!(knock_rx.recv(&mut [0u8; 1024]).is_err(), "a knock was sent");
}

#[test]
fn closed_port_after_knock_exits_4_and_the_packets_went_out() {
    let dir = tempfile::tempdir().unwrap();
    let knock_rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    knock_rx
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    profile(
        dir.path(),
        "127.0.0.1",
        closed_port(),
        knock_rx.local_addr().unwrap().port(),
    );
    let out = knock(
        dir.path(),
        &["127.0.0.1", "--otp-stdin", "--wait", "1"],
        "123456\n",
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("knock sent to 127.0.0.1"), "{said}");
    assert!(said.contains("still closed after 1 knock"), "{said}");
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        let n = knock_rx.recv(&mut buf).unwrap();
        assert_eq!(n, KNOCK_LEN);
    }
}

#[test]
fn no_code_and_no_terminal_exits_5() {
    let dir = tempfile::tempdir().unwrap();
    profile(dir.path(), "127.0.0.1", closed_port(), 9);
    let out = knock(dir.path(), &["p"], "");
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains("--otp"), "{}", text(&out));
}

#[test]
fn configuration_problems_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    // No config at all.
    let out = knock(dir.path(), &["p"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("does not exist"), "{}", text(&out));
    profile(dir.path(), "127.0.0.1", 22, 9);
    // Unknown profile, no such host either.
    let out = knock(dir.path(), &["elsewhere"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("p (127.0.0.1)"), "{}", text(&out));
    // A malformed code.
    let out = knock(dir.path(), &["p", "--otp", "12345", "--no-check"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // A client config others can read.
    let path = dir.path().join("client.toml");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = knock(dir.path(), &["p"], "");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
}

#[test]
fn unresolvable_server_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    profile(dir.path(), "capyknock-test.invalid", 22, 9);
    let out = knock(dir.path(), &["p", "--otp", "123456"], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("cannot resolve"), "{}", text(&out));
}

#[test]
fn proxy_relays_to_an_open_port() {
    let dir = tempfile::tempdir().unwrap();
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    profile(dir.path(), "127.0.0.1", port, 9);
    // An upper-casing echo: proves the bytes went through the service.
    let server = std::thread::spawn(move || {
        let (mut s, _) = service.accept().unwrap();
        s.write_all(b"hello\n").unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(&got.to_ascii_uppercase()).unwrap();
        got
    });
    let out = knock(
        dir.path(),
        &["127.0.0.1", "--port", &port.to_string(), "--proxy"],
        "ping pong\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, b"hello\nPING PONG\n");
    assert_eq!(server.join().unwrap(), b"ping pong\n");
}

/// A malformed code on stdin is refused before anything touches the network: no probe of the
/// port, no packet.
#[test]
fn a_malformed_stdin_code_fails_before_any_probe() {
    let dir = tempfile::tempdir().unwrap();
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    service.set_nonblocking(true).unwrap();
    let knock_rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    knock_rx.set_nonblocking(true).unwrap();
    profile(
        dir.path(),
        "127.0.0.1",
        service.local_addr().unwrap().port(),
        knock_rx.local_addr().unwrap().port(),
    );
    let out = knock(dir.path(), &["p", "--otp-stdin"], "12x456\n");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(service.accept().is_err(), "the port was probed first");
    assert!(knock_rx.recv(&mut [0u8; 1024]).is_err(), "a knock was sent");
}
