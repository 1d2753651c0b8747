//! Fuzzes the whole verifier. The first input byte picks what the rest is:
//! - even: the raw packet, as any sender could send it;
//! - odd: a 176-byte plaintext sealed with a real user's key (zero-padded or cut), so the
//!   payload decoder and the policy checks behind the AEAD get fuzzed too (authenticated users
//!   are hostile as well).
//!
//! Never a panic; a grant only for a packet sealed with the user's key.
#![no_main]

use std::{net::IpAddr, sync::OnceLock, time::Duration};

use capyknock::{
    ports::PortSpec,
    protocol::{
        keys::{TotpSecret, UserId, UserKey},
        packet::seal_plaintext,
        replay::ReplayState,
        totp::step_of,
        users::{AllowIp, TotpMode, User, Users},
        verify::{Settings, Verdict, Verifier},
    },
};
use capyknock_common::wire::PLAINTEXT_LEN;
use libfuzzer_sys::fuzz_target;

/// The time of docs/PROTOCOL.md's vector 1, so the committed corpus holds a valid knock.
const NOW: u64 = 1_111_111_109;

fn users() -> &'static Users {
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| {
        let user = |id: [u8; 16], key: [u8; 32], allow_ip| User {
            id: UserId(id),
            nickname: "fuzz".into(),
            key: UserKey::from_bytes(key),
            totp: TotpSecret::from_bytes(*b"12345678901234567890"),
            totp_mode: TotpMode::Prompt,
            ports: vec![PortSpec::tcp(22), PortSpec::tcp(443), PortSpec::udp(51820)],
            access: Duration::from_secs(3600),
            allow_ip,
        };
        Users::new(vec![
            // Vector 1 of docs/PROTOCOL.md.
            user(
                core::array::from_fn(|i| i as u8),
                core::array::from_fn(|i| i as u8),
                AllowIp::Source,
            ),
            user([0xaa; 16], [0x55; 32], AllowIp::RequireMatch),
        ])
        .expect("distinct ids")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let source: IpAddr = "192.0.2.10".parse().expect("literal");
    let mut verifier = Verifier::new(Settings::default(), ReplayState::safe_start(0));
    let sealed;
    let packet: &[u8] = if mode % 2 == 0 {
        rest
    } else {
        let mut plaintext = [0u8; PLAINTEXT_LEN];
        let n = rest.len().min(PLAINTEXT_LEN);
        plaintext[..n].copy_from_slice(&rest[..n]);
        let id = UserId(core::array::from_fn(|i| i as u8));
        let key = UserKey::from_bytes(core::array::from_fn(|i| i as u8));
        sealed = seal_plaintext(&id, &key, step_of(NOW), &plaintext, &[mode; 24]).expect("seal");
        &sealed
    };
    let verdict = verifier.verify(users(), packet, source, NOW);
    if let Verdict::Grant(grant) = &verdict {
        assert!(!grant.ports.is_empty() && grant.ports.len() <= 16);
        // Replaying the very same packet must never grant again.
        assert!(matches!(
            verifier.verify(users(), packet, source, NOW),
            Verdict::Reject(_)
        ));
    }
});
