//! Machine-to-machine profile end to end: `keygen --totp-mode derived` stores the TOTP secret in
//! the client profile, and `knock` opens the port with no code typed and no terminal (a backup
//! job); the server's user entry says `derived`. Needs root.

use std::net::IpAddr;

use capyknock::{client::config::CodeSource, protocol::users::TotpMode};
use capyknock_testkit::process::output_text as text;
use capyknock_tests::e2e::{BANNER, Lab, SERVICE_PORT};

#[test]
fn derived_profile_knocks_without_a_human() {
    let mut lab = Lab::new("m2m");
    let server_ip = IpAddr::V4(lab.client_link.a_v4);
    let backup = lab.keygen(
        "backup",
        "nightly",
        &server_ip.to_string(),
        &["--totp-mode", "derived"],
    );
    assert!(
        backup.stdout.contains("Machine profile"),
        "{}",
        backup.stdout
    );
    // The secret lives in the two configs only: keygen prints no URI for a machine.
    assert!(
        backup.uri.is_empty() && !backup.stdout.contains("otpauth://"),
        "{}",
        backup.stdout
    );

    // Both files agree: derived mode, the same secret.
    let client = capyknock::client::config::load(&lab.client_config()).unwrap();
    let profile = client.select(Some("nightly")).unwrap();
    let CodeSource::Derived(secret) = &profile.code else {
        panic!("profile is not derived: {profile:?}")
    };
    let server = capyknock::server::config::load(&lab.server_config()).unwrap();
    let user = server
        .users
        .iter()
        .find(|u| u.nickname == "backup")
        .unwrap();
    assert_eq!(user.totp_mode, TotpMode::Derived);
    assert_eq!(secret, &user.totp);
    assert!(
        !backup.stdout.contains(&secret.to_base32_secret()),
        "secret printed"
    );

    lab.start_daemon();
    assert_eq!(Lab::probe(&lab.client, server_ip, SERVICE_PORT), None);
    // No code on stdin, no terminal: the profile computes it.
    let out = lab.knock(&["nightly"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        Lab::probe(&lab.client, server_ip, SERVICE_PORT).as_deref(),
        Some(BANNER)
    );
    assert_eq!(lab.status().verifier.accepted, 1);

    // The next run finds the port open and sends nothing.
    let out = lab.knock(&["nightly", "--quiet"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stderr.is_empty(), "--quiet printed: {}", text(&out));
    assert_eq!(lab.status().verifier.accepted, 1);
}

/// A machine profile checking a port the user may open but where nothing listens: dropped
/// before the knock, refused after it. The client says the knock worked and the service is
/// missing, exits 6 at once, and sends one knock, not a second one with the next code.
#[test]
fn a_port_where_nothing_listens_is_reported_as_such() {
    const NOTHING_THERE: u16 = 2999;
    let mut lab = Lab::new("m2n");
    let server_ip = IpAddr::V4(lab.client_link.a_v4);
    let _ = lab.keygen(
        "cron",
        "cron",
        &server_ip.to_string(),
        &[
            "--totp-mode",
            "derived",
            "--ports",
            &NOTHING_THERE.to_string(),
        ],
    );
    lab.start_daemon();
    let out = lab.knock(&["cron", "--port", &NOTHING_THERE.to_string()], "");
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("the knock opened tcp/{NOTHING_THERE}"))
            && text(&out).contains("nothing listens"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("wrong code"), "{}", text(&out));
    assert_eq!(lab.status().verifier.accepted, 1);
    let rejected: u64 = lab.status().verifier.rejected.values().sum();
    assert_eq!(rejected, 0, "a second knock was sent and refused");
}
