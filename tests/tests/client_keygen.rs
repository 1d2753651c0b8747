//! `capyknock keygen` through the binary: the QR code PNG decodes (rqrr, an independent
//! decoder) to exactly the printed otpauth URI; `check-config` accepts the server config it
//! wrote; a second user is appended without touching the first; both files are 0600 and agree;
//! missing flags without a terminal and taken profile names fail clearly, leaving the files
//! alone; without `--client-config` the profile goes to a file of its own next to the server
//! config (never the admin's own client config), every new directory 0700. No root needed.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Output, Stdio},
};

use capyknock::client::config::CodeSource;
use capyknock_testkit::process::output_text as text;
use capyknock_tests::capyknock_bin;

fn keygen(dir: &Path, extra: &[&str]) -> Output {
    Command::new(capyknock_bin())
        .arg("keygen")
        .arg("--server-config")
        .arg(dir.join("server.toml"))
        .arg("--client-config")
        .arg(dir.join("client.toml"))
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn uri_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("otpauth://"))
        .unwrap_or_else(|| panic!("no URI:\n{}", text(out)))
        .to_owned()
}

/// Decodes the single QR code in a greyscale or RGB(A) PNG.
fn decode_qr(png_path: &Path) -> String {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = info.color_type.samples();
    let mut img =
        rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[(y * w + x) * channels]);
    let grids = img.detect_grids();
    assert_eq!(
        grids.len(),
        1,
        "expected one QR code in {}",
        png_path.display()
    );
    grids[0].decode().unwrap().1
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn qr_png_decodes_to_the_printed_uri_and_check_config_accepts_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("alice.png");
    let out = keygen(
        dir.path(),
        &[
            "--nickname",
            "alice",
            "--server",
            "vpn.example.com",
            "--ports",
            "22,udp/51820",
            "--knock-port",
            "40000",
            "--qr-png",
            png.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let uri = uri_of(&out);
    assert!(
        uri.starts_with("otpauth://totp/capyknock:alice@vpn.example.com?secret="),
        "{uri}"
    );
    assert!(
        uri.ends_with("&issuer=capyknock&algorithm=SHA1&digits=6&period=30"),
        "{uri}"
    );
    assert_eq!(decode_qr(&png), uri);
    // The terminal QR code was printed too (stdout is not a terminal: plain blocks).
    assert!(String::from_utf8_lossy(&out.stdout).contains('█'));
    for f in ["server.toml", "client.toml", "alice.png"] {
        assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
    }

    let check = Command::new(capyknock_bin())
        .arg("check-config")
        .arg(dir.path().join("server.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check-config refused keygen's file:\n{}",
        text(&check)
    );

    // The URI's secret is the server's, and the client profile matches the server entry.
    let server = capyknock::server::config::load(&dir.path().join("server.toml")).unwrap();
    assert_eq!(server.knock_ports, vec![40000]);
    let [user] = server.users.as_slice() else {
        panic!("{:?}", server.users)
    };
    assert!(uri.contains(&format!("secret={}&", user.totp.to_base32_secret())));
    let client = capyknock::client::config::load(&dir.path().join("client.toml")).unwrap();
    let profile = client.select(Some("vpn.example.com")).unwrap();
    assert_eq!(profile.user_id, user.id);
    assert_eq!(profile.key, user.key);
    assert_eq!(profile.knock_port, 40000);
    assert_eq!(profile.check_port, Some(22));
    assert_eq!(profile.code, CodeSource::Prompt);
}

#[test]
fn second_user_is_appended_and_conflicts_leave_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let first = keygen(
        dir.path(),
        &[
            "--nickname",
            "alice",
            "--server",
            "h.example",
            "--ports",
            "22",
            "--no-qr",
        ],
    );
    assert!(first.status.success(), "{}", text(&first));
    let server_before = std::fs::read_to_string(dir.path().join("server.toml")).unwrap();
    let client_before = std::fs::read_to_string(dir.path().join("client.toml")).unwrap();

    // Same profile name (the server's host by default): refused before anything is written.
    let clash = keygen(
        dir.path(),
        &[
            "--nickname",
            "bob",
            "--server",
            "h.example",
            "--ports",
            "22",
            "--no-qr",
        ],
    );
    assert!(!clash.status.success());
    assert!(text(&clash).contains("--profile"), "{}", text(&clash));
    // Same nickname: the server config refuses it.
    let dup = keygen(
        dir.path(),
        &[
            "--nickname",
            "alice",
            "--server",
            "h.example",
            "--profile",
            "x",
            "--ports",
            "22",
        ],
    );
    assert!(!dup.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("server.toml")).unwrap(),
        server_before
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("client.toml")).unwrap(),
        client_before
    );

    // A machine user under another profile name is appended after the first.
    let second = keygen(
        dir.path(),
        &[
            "--nickname",
            "ci",
            "--server",
            "h.example",
            "--profile",
            "ci",
            "--ports",
            "443",
            "--totp-mode",
            "derived",
            "--access",
            "2m",
        ],
    );
    assert!(second.status.success(), "{}", text(&second));
    // No QR code for a machine: nobody scans it.
    assert!(!String::from_utf8_lossy(&second.stdout).contains('█'));
    let server_after = std::fs::read_to_string(dir.path().join("server.toml")).unwrap();
    let client_after = std::fs::read_to_string(dir.path().join("client.toml")).unwrap();
    assert!(server_after.starts_with(&server_before));
    assert!(client_after.starts_with(&client_before));
    let client = capyknock::client::config::load(&dir.path().join("client.toml")).unwrap();
    assert_eq!(client.profiles.len(), 2);
    let ci = client.select(Some("ci")).unwrap();
    assert!(matches!(ci.code, CodeSource::Derived(_)));
    let server = capyknock::server::config::load(&dir.path().join("server.toml")).unwrap();
    assert_eq!(server.users.len(), 2);
    assert_eq!(server.users[1].access, std::time::Duration::from_mins(2));
}

#[test]
fn missing_flags_without_a_terminal_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = keygen(dir.path(), &["--server", "h.example", "--ports", "22"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("missing --nickname"), "{}", text(&out));
    assert!(text(&out).contains("no terminal"), "{}", text(&out));
    assert!(!dir.path().join("server.toml").exists());
    assert!(!dir.path().join("client.toml").exists());
}

/// keygen on a server, for someone else: the profile is a hand-over file of its own in a 0700
/// `clients/` directory next to the server config, and the admin's own client config (under
/// `$HOME`) is not touched. Directories keygen creates are 0700.
#[test]
fn without_client_config_the_profile_is_a_handover_file() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let etc = dir.path().join("etc/capyknock");
    let out = Command::new(capyknock_bin())
        .args(["keygen", "--nickname", "alice", "--server", "h.example"])
        .args(["--ports", "22", "--no-qr", "--server-config"])
        .arg(etc.join("server.toml"))
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let handover = etc.join("clients/alice.toml");
    assert_eq!(mode(&handover), 0o600);
    assert_eq!(mode(&etc.join("clients")), 0o700);
    assert_eq!(mode(&etc), 0o700, "the server config directory");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&handover.display().to_string()),
        "{}",
        text(&out)
    );
    assert!(
        !home.join(".config").exists(),
        "the admin's own config was touched"
    );
    let client = capyknock::client::config::load(&handover).unwrap();
    assert_eq!(client.profiles.len(), 1);
}
