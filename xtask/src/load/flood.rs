//! The junk of the flood: what it sends ([`Junk`] profiles, each a pool of distinct packets
//! sent round-robin by the kit's `sendmmsg` sender), where it goes (the attacker's veth to the
//! knock port), and what sending alone costs the sender ([`Calibration`]: the same flood into a
//! link whose peer is down, so that the receive work the kernel does inside the sender's
//! `sendmmsg` calls can be counted to the receiving side).

use std::{
    collections::BTreeMap,
    fmt,
    net::{SocketAddr, SocketAddrV4},
    str::FromStr,
    time::Duration,
};

use anyhow::bail;
use capyknock_common::wire::{
    KNOCK_LEN, MAGIC, NONCE_OFFSET, TIME_STEP_OFFSET, USER_ID_LEN, USER_ID_OFFSET, VERSION,
};
use capyknock_testkit::{
    flood::{Flood, FloodStats, Limits, Rate},
    netns::NetNs,
    wait::sleep,
};
use serde::Serialize;

/// The knock magic and version.
const MAGIC_VERSION: [u8; 5] = [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION];
/// Offsets in the knock header (docs/PROTOCOL.md).
const USER_ID: std::ops::Range<usize> = USER_ID_OFFSET..USER_ID_OFFSET + USER_ID_LEN;
const TIME_STEP: std::ops::Range<usize> = TIME_STEP_OFFSET..NONCE_OFFSET;
/// The nonce, tag and everything after: what "wrong tag" packets randomise.
const AFTER_STEP: std::ops::RangeFrom<usize> = NONCE_OFFSET..;
/// Largest random datagram: fits a 1500-byte MTU without IP fragments.
const MAX_RANDOM_LEN: usize = 1472;
/// Distinct packets per profile, sent round-robin (the sender does no work per packet).
const POOL: usize = 4096;
/// Most junk packets one run sends (a bound on top of the time limit).
pub const MAX_PACKETS_PER_RUN: u64 = 50_000_000;
/// How long each calibration flood runs.
const CALIBRATION: Duration = Duration::from_secs(2);

/// What the junk looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Junk {
    /// Random bytes of random length (1 to 1472).
    Random,
    /// The exact knock size, right magic and version and the current time step, random user
    /// ids (dies at "unknown user").
    Magic,
    /// A known user id and the current time step with random tags (dies at "bad tag").
    BadTag,
    /// One captured valid knock (already used by its owner), replayed (dies at "duplicate").
    Replay,
    /// The four above in turn.
    Mix,
}

impl Junk {
    /// Every profile, in report order.
    pub const ALL: [Junk; 5] = [
        Junk::Random,
        Junk::Magic,
        Junk::BadTag,
        Junk::Replay,
        Junk::Mix,
    ];

    /// Stable name (CLI, JSON, report).
    pub fn name(self) -> &'static str {
        match self {
            Junk::Random => "random",
            Junk::Magic => "magic",
            Junk::BadTag => "bad_tag",
            Junk::Replay => "replay",
            Junk::Mix => "mix",
        }
    }

    /// One line for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Junk::Random => "random bytes, random length 1-1472",
            Junk::Magic => "256 bytes, right magic/version/step, random user ids",
            Junk::BadTag => "256 bytes, a known user id, current step, wrong tags",
            Junk::Replay => "one captured valid knock, replayed",
            Junk::Mix => "random, magic, bad_tag and replay in turn",
        }
    }
}

impl fmt::Display for Junk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Junk {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Junk::ALL
            .into_iter()
            .find(|j| j.name() == s || (s == "badtag" && *j == Junk::BadTag))
            .ok_or_else(|| {
                format!("unknown junk profile {s:?} (random, magic, bad_tag, replay, mix)")
            })
    }
}

/// What the junk packets are made from.
#[derive(Debug, Clone)]
pub struct Material {
    /// A valid knock of the junk user, already delivered once (so its copies are duplicates).
    pub captured: Vec<u8>,
    /// The current TOTP time step.
    pub time_step: u64,
}

/// Builds the packet pool of `junk`.
pub fn pool(junk: Junk, m: &Material) -> anyhow::Result<Vec<Vec<u8>>> {
    if m.captured.len() != KNOCK_LEN {
        bail!(
            "the captured knock is {} bytes, not {KNOCK_LEN}",
            m.captured.len()
        );
    }
    let mut rng = fastrand::Rng::new();
    let known_user = m.captured.get(USER_ID).unwrap_or_default().to_vec();
    let step = m.time_step.to_be_bytes();
    let header = |user: &[u8], rng: &mut fastrand::Rng| {
        let mut p = vec![0u8; KNOCK_LEN];
        rng.fill(&mut p);
        if let Some(h) = p.get_mut(..8) {
            h.fill(0);
        }
        if let Some(h) = p.get_mut(..MAGIC_VERSION.len()) {
            h.copy_from_slice(&MAGIC_VERSION);
        }
        if let Some(u) = p.get_mut(USER_ID) {
            u.copy_from_slice(user);
        }
        if let Some(s) = p.get_mut(TIME_STEP) {
            s.copy_from_slice(&step);
        }
        p
    };
    let one = |kind: Junk, rng: &mut fastrand::Rng| -> Vec<u8> {
        match kind {
            Junk::Random | Junk::Mix => {
                let mut p = vec![0u8; rng.usize(1..=MAX_RANDOM_LEN)];
                rng.fill(&mut p);
                p
            }
            Junk::Magic => {
                let mut user = [0u8; 16];
                rng.fill(&mut user);
                header(&user, rng)
            }
            Junk::BadTag => {
                let mut p = header(&known_user, rng);
                // Everything from the nonce on is random already; the tag matches with
                // probability 2^-64.
                if let Some(rest) = p.get_mut(AFTER_STEP) {
                    rng.fill(rest);
                }
                p
            }
            Junk::Replay => m.captured.clone(),
        }
    };
    let kinds: &[Junk] = match junk {
        Junk::Mix => &[Junk::Random, Junk::Magic, Junk::BadTag, Junk::Replay],
        _ => &[junk],
    };
    let count = if junk == Junk::Replay { 1 } else { POOL };
    Ok((0..count)
        .map(|i| {
            one(
                kinds.get(i % kinds.len()).copied().unwrap_or(junk),
                &mut rng,
            )
        })
        .collect())
}

/// Starts a flood of `pool` from `ns` to `to` at `rate`, for at most `max_secs` (and as many
/// packets as `rate` sends in that time, or [`MAX_PACKETS_PER_RUN`] unpaced).
pub fn start(
    ns: &NetNs,
    to: SocketAddrV4,
    pool: Vec<Vec<u8>>,
    rate: Rate,
    max_secs: f64,
) -> anyhow::Result<Flood> {
    let packets = match rate {
        Rate::Pps(pps) => (pps as f64 * max_secs) as u64,
        Rate::Max => MAX_PACKETS_PER_RUN,
    };
    Ok(Flood::start(
        ns,
        SocketAddr::V4(to),
        pool,
        rate,
        Limits {
            secs: max_secs,
            packets,
        },
    )?)
}

/// What sending costs the sending thread alone, ns per packet, by junk profile and rate,
/// measured once each on the calibration link (whose peer is down: the packets die at the
/// sender's own queue, so no receive work is done anywhere).
#[derive(Debug, Default)]
pub struct Calibration {
    measured: BTreeMap<(Junk, Rate), f64>,
}

impl Calibration {
    /// What sending `pool` at `rate` costs the sender alone from `ns` to `dead_end`.
    pub fn sender_alone(
        &mut self,
        ns: &NetNs,
        dead_end: SocketAddrV4,
        key: (Junk, Rate),
        pool: &[Vec<u8>],
    ) -> anyhow::Result<f64> {
        if let Some(ns) = self.measured.get(&key) {
            return Ok(*ns);
        }
        let flood = start(
            ns,
            dead_end,
            pool.to_vec(),
            key.1,
            CALIBRATION.as_secs_f64(),
        )?;
        sleep(CALIBRATION)?;
        let stats: FloodStats = flood.stop()?;
        if stats.sent == 0 {
            bail!(
                "the calibration flood sent nothing ({} errors)",
                stats.send_errors
            );
        }
        let ns = stats.cpu_secs * 1e9 / stats.sent as f64;
        self.measured.insert(key, ns);
        Ok(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> Material {
        let mut captured = vec![0u8; KNOCK_LEN];
        captured[..5].copy_from_slice(&MAGIC_VERSION);
        captured[USER_ID].fill(0xAB);
        Material {
            captured,
            time_step: 0x0102_0304_0506_0708,
        }
    }

    #[test]
    fn profiles_look_as_described() {
        let m = material();
        let step = m.time_step.to_be_bytes();
        let random = pool(Junk::Random, &m).unwrap();
        assert_eq!(random.len(), POOL);
        assert!(
            random
                .iter()
                .all(|p| (1..=MAX_RANDOM_LEN).contains(&p.len()))
        );
        assert!(random.iter().any(|p| p.len() != random[0].len()));

        for p in pool(Junk::Magic, &m).unwrap() {
            assert_eq!(p.len(), KNOCK_LEN);
            assert_eq!(&p[..5], &MAGIC_VERSION);
            assert_eq!(&p[5..8], &[0, 0, 0]);
            assert_eq!(&p[TIME_STEP], &step);
            assert_ne!(&p[USER_ID], &m.captured[USER_ID]);
        }
        let bad = pool(Junk::BadTag, &m).unwrap();
        for p in &bad {
            assert_eq!(&p[USER_ID], &m.captured[USER_ID]);
            assert_eq!(&p[TIME_STEP], &step);
        }
        assert_ne!(bad[0][56..64], bad[1][56..64], "tags differ");
        assert_eq!(pool(Junk::Replay, &m).unwrap(), vec![m.captured.clone()]);
        let mix = pool(Junk::Mix, &m).unwrap();
        assert_eq!(mix[3], m.captured);
        assert_eq!(&mix[1][USER_ID].len(), &16);
        assert!(
            pool(
                Junk::Replay,
                &Material {
                    captured: vec![1],
                    time_step: 0
                }
            )
            .is_err()
        );
    }

    #[test]
    fn profiles_parse() {
        assert_eq!("bad_tag".parse(), Ok(Junk::BadTag));
        assert_eq!("badtag".parse(), Ok(Junk::BadTag));
        assert!("x".parse::<Junk>().is_err());
    }

    #[test]
    fn the_layout_matches_the_protocol() {
        assert_eq!(&MAGIC_VERSION, b"CKnk\x01");
        assert_eq!(USER_ID, 8..24);
        assert_eq!(TIME_STEP, 24..32);
        assert_eq!(AFTER_STEP, 32..);
    }
}
