//! The etcd key layout of fleet mode (docs/FLEET.md, "Keys"): pure functions from what is
//! claimed to the key that claims it, so the layout is written down once and tested.
//!
//! ```text
//! PREFIX claims/step/USER/STEP       value: node name   lease: claim lease
//! PREFIX claims/packet/PACKET_ID     value: node name   lease: claim lease
//! ```
//!
//! `USER` and `PACKET_ID` are lower-case hex, `STEP` is the TOTP step (Unix time / 30) as a
//! 20-digit zero-padded decimal, so the keys of one user sort by step.

use std::time::Duration;

use crate::protocol::replay::Used;

/// The key that claims `used`'s (user, TOTP step).
#[must_use]
pub fn step_claim(prefix: &str, used: &Used) -> String {
    format!("{prefix}claims/step/{}/{:020}", used.user, used.step)
}

/// The key that claims `used`'s packet id.
#[must_use]
pub fn packet_claim(prefix: &str, used: &Used) -> String {
    format!("{prefix}claims/packet/{}", used.packet_id)
}

/// How long a claim must outlive its knock: while a packet of that step and timestamp could
/// still pass the verifier anywhere in the fleet. The verifier accepts a timestamp up to
/// `freshness` old and a code one step (30 s) either side; clocks of the nodes may differ by
/// up to [`CLOCK_TOLERANCE`]. Past that, every node refuses the packet by itself.
#[must_use]
pub fn claim_lifetime(freshness: Duration) -> Duration {
    // One 30 s step either side.
    freshness + Duration::from_mins(1) + CLOCK_TOLERANCE
}

/// How far apart the nodes' clocks may be (NTP keeps them far closer).
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{keys::UserId, payload::PacketId};

    #[test]
    fn layout() {
        let used = Used {
            user: UserId([0xab; 16]),
            step: 58_000_000,
            packet_id: PacketId([0x01; 16]),
        };
        assert_eq!(
            step_claim("/capyknock/", &used),
            "/capyknock/claims/step/abababababababababababababababab/00000000000058000000"
        );
        assert_eq!(
            packet_claim("/ck/", &used),
            "/ck/claims/packet/01010101010101010101010101010101"
        );
        assert_eq!(
            claim_lifetime(Duration::from_secs(90)),
            Duration::from_mins(3)
        );
    }
}
