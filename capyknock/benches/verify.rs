//! Criterion benchmark of the verifier on the packets it meets: junk, forgeries of increasing
//! quality, valid knocks and replays of valid knocks. docs/PERFORMANCE.md ("Verifier") has the
//! figures; run with `cargo bench -p capyknock --bench verify`.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "benchmark set-up on fixed data"
)]

use std::{hint::black_box, net::IpAddr, time::Duration};

use capyknock::{
    ports::PortSpec,
    protocol::{
        keys::{TotpSecret, UserId, UserKey},
        packet::{KnockRequest, Randomness, build_knock},
        replay::ReplayState,
        totp::Totp,
        users::{AllowIp, TotpMode, User, Users},
        verify::{Settings, Verdict, Verifier},
    },
};
use capyknock_common::wire::{Header, KNOCK_LEN, NONCE_LEN};
use chacha20poly1305::{AeadInPlace as _, KeyInit as _, XChaCha20Poly1305, XNonce};
use criterion::{
    BatchSize, Criterion, Throughput, criterion_group, criterion_main,
    measurement::{Measurement, ValueFormatter, WallTime},
};

const NOW: u64 = 1_700_000_000;
const USERS: usize = 1000;

fn user(n: usize) -> User {
    let b = n.to_le_bytes();
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&b);
    User {
        id: UserId(id),
        nickname: format!("user{n}"),
        key: UserKey::random().unwrap(),
        totp: TotpSecret::random().unwrap(),
        totp_mode: TotpMode::Prompt,
        ports: vec![PortSpec::tcp(22), PortSpec::tcp(443)],
        access: Duration::from_hours(1),
        allow_ip: AllowIp::Source,
    }
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Grant(_) => "grant",
        Verdict::Reject(r) => r.reason.name(),
    }
}

fn bench<M: Measurement + 'static>(c: &mut Criterion<M>, suffix: &str) {
    let list: Vec<User> = (0..USERS).map(user).collect();
    let alice = list[USERS / 2].clone();
    let users = Users::new(list).unwrap();
    let src: IpAddr = "198.51.100.7".parse().unwrap();
    let code = Totp::new(&alice.totp).unwrap().code_at(NOW);
    let valid = build_knock(
        &alice.id,
        &alice.key,
        &code,
        &KnockRequest::default(),
        NOW,
        &Randomness::os().unwrap(),
    )
    .unwrap();

    let mut random = [0u8; KNOCK_LEN];
    getrandom::fill(&mut random).unwrap();
    let mut unknown_user = valid;
    unknown_user[23] ^= 0xff; // last user id byte: zero in every test user
    let mut bad_tag = valid;
    bad_tag[60] ^= 1;
    // A right tag over a fresh nonce (what the holder of only the tag key could make), with a
    // body that does not authenticate: the cheapest packet that reaches the AEAD.
    let mut forged_body = valid;
    let header = Header::sealed(
        alice.key.tag_key().expose_secret(),
        alice.id.0,
        NOW / 30,
        [7; NONCE_LEN],
    );
    forged_body[..64].copy_from_slice(&header.to_bytes());

    let fresh = || Verifier::new(Settings::default(), ReplayState::safe_start(0));
    let mut replaying = fresh();
    assert_eq!(
        verdict_name(&replaying.verify(&users, &valid, src, NOW)),
        "grant"
    );

    let cases: [(&str, &[u8], &str); 5] = [
        ("wrong_size", &valid[..100], "wrong_size"),
        ("random_bytes", &random, "bad_magic"),
        ("unknown_user", &unknown_user, "unknown_user"),
        ("bad_tag", &bad_tag, "bad_tag"),
        ("forged_body_reaches_aead", &forged_body, "decrypt_failed"),
    ];
    let mut group = c.benchmark_group(format!("verify{suffix}"));
    group.throughput(Throughput::Elements(1));
    for (name, packet, expected) in cases {
        let mut v = fresh();
        assert_eq!(verdict_name(&v.verify(&users, packet, src, NOW)), expected);
        group.bench_function(name, |b| {
            b.iter(|| v.verify(&users, black_box(packet), src, NOW));
        });
    }
    group.bench_function("replay_of_valid_knock", |b| {
        b.iter(|| replaying.verify(&users, black_box(&valid), src, NOW));
    });
    group.bench_function("valid_knock_granted", |b| {
        b.iter_batched(
            fresh,
            |mut v| v.verify(&users, black_box(&valid), src, NOW),
            BatchSize::SmallInput,
        );
    });
    group.finish();

    // The building blocks, to see where the time of a candidate goes.
    let mut group = c.benchmark_group(format!("primitives{suffix}"));
    group.throughput(Throughput::Elements(1));
    let tag_key = *alice.key.tag_key().expose_secret();
    let tagged: [u8; 56] = valid[..56].try_into().unwrap();
    group.bench_function("siphash24_header_tag", |b| {
        b.iter(|| capyknock_common::wire::header_tag(black_box(&tag_key), black_box(&tagged)));
    });
    let aead = XChaCha20Poly1305::new(&(*derive_aead_key(&alice)).into());
    group.bench_function("xchacha20poly1305_open_176", |b| {
        b.iter(|| {
            let mut buf = [0u8; 176];
            buf.copy_from_slice(&valid[64..240]);
            aead.decrypt_in_place_detached(
                XNonce::from_slice(&valid[32..56]),
                &valid[..64],
                &mut buf,
                valid[240..].into(),
            )
            .is_ok()
        });
    });
    let totp = Totp::new(&alice.totp).unwrap();
    group.bench_function("totp_check_current_step", |b| {
        b.iter(|| totp.check(black_box(&code), NOW));
    });
    group.finish();
}

/// The AEAD key, derived as docs/PROTOCOL.md says (the crate keeps its own derivation private).
fn derive_aead_key(user: &User) -> zeroize::Zeroizing<[u8; 32]> {
    let secret = user.key.to_base64_secret();
    let ikm = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, secret).unwrap();
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<sha2::Sha256>::new(None, &ikm)
        .expand(capyknock::protocol::keys::AEAD_KEY_LABEL, &mut out[..])
        .unwrap();
    out
}

/// CPU time of the benchmarking thread (Linux `CLOCK_THREAD_CPUTIME_ID`): on a machine shared
/// with other work, this is the cost on one core, which wall time overstates.
struct ThreadCpuTime;

impl ThreadCpuTime {
    #[cfg(target_os = "linux")]
    fn now() -> Duration {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(
            Duration::ZERO,
            |ts| {
                Duration::new(
                    u64::try_from(ts.tv_sec()).unwrap_or(0),
                    u32::try_from(ts.tv_nsec()).unwrap_or(0),
                )
            },
        )
    }

    #[cfg(not(target_os = "linux"))]
    fn now() -> Duration {
        // No portable thread CPU clock: fall back to wall time elsewhere.
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed()
    }
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        Self::now()
    }
    fn end(&self, start: Duration) -> Duration {
        Self::now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_secs_f64() * 1e9
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WallTime.formatter()
    }
}

fn wall_time(c: &mut Criterion) {
    bench(c, "");
}

fn cpu_time(c: &mut Criterion<ThreadCpuTime>) {
    bench(c, "_cpu");
}

fn config<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    c.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = wall;
    config = config(Criterion::default());
    targets = wall_time
}
criterion_group! {
    name = cpu;
    config = config(Criterion::default().with_measurement(ThreadCpuTime));
    targets = cpu_time
}
criterion_main!(wall, cpu);
