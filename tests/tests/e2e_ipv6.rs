//! IPv6 end to end: a profile whose server is an IPv6 address knocks over IPv6, the grant is for
//! the client's IPv6 address only (its IPv4 address stays shut out), and `-4` on an IPv6-only
//! profile fails with the resolve exit status. Needs root.

use std::net::IpAddr;

use capyknock_testkit::{
    clock::{unix_now, wait_for_fresh_step},
    process::output_text as text,
};
use capyknock_tests::e2e::{BANNER, Lab, SERVICE_PORT};

#[test]
fn knock_over_ipv6_opens_for_the_ipv6_source_only() {
    let mut lab = Lab::new("v6");
    let server_v6 = IpAddr::V6(lab.client_link.a_v6);
    let server_v4 = IpAddr::V4(lab.client_link.a_v4);
    let client_v6 = IpAddr::V6(lab.client_link.b_v6);
    let alice = lab.keygen("alice", "work6", &format!("[{server_v6}]"), &[]);
    lab.start_daemon();

    assert_eq!(Lab::probe(&lab.client, server_v6, SERVICE_PORT), None);
    assert_eq!(Lab::probe(&lab.client, server_v4, SERVICE_PORT), None);

    // -4 cannot reach an IPv6-only profile: exit status 3, nothing sent.
    let out = lab.knock(&["work6", "-4", "--otp", "123456"], "");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("no IPv4 address"), "{}", text(&out));

    wait_for_fresh_step(6);
    let code = alice.code_at(unix_now());
    // The profile is found by its server address too, written differently.
    let host = lab.client_link.a_v6.to_string().replace("::", ":0::");
    let out = lab.knock(&[&host, "--otp-stdin"], &format!("{}\n", code.as_str()));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("knock sent to {server_v6}")),
        "{}",
        text(&out)
    );

    assert_eq!(
        Lab::probe(&lab.client, server_v6, SERVICE_PORT).as_deref(),
        Some(BANNER)
    );
    // The grant is for the address the knock came from, not for the client's other address.
    assert_eq!(Lab::probe(&lab.client, server_v4, SERVICE_PORT), None);
    let status = lab.status();
    let grant = status
        .grants
        .iter()
        .find(|g| g.nickname == "alice")
        .unwrap();
    assert_eq!(grant.addr, client_v6);
}
