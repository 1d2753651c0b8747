//! Sealing and opening knock packets: the client builds one with [`build_knock`]; the verifier
//! opens one with [`open`]. Layout in `capyknock_common::wire` and docs/PROTOCOL.md.

use std::net::IpAddr;

use capyknock_common::wire::{
    AEAD_TAG_LEN, BODY_LEN, HEADER_LEN, Header, KNOCK_LEN, NONCE_LEN, PLAINTEXT_LEN,
};
use chacha20poly1305::{AeadInPlace as _, KeyInit as _, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::{
    keys::{KeyError, UserId, UserKey, os_random},
    payload::{PACKET_ID_LEN, PacketId, Payload, PayloadError},
    totp::{TotpCode, step_of},
};
use crate::ports::PortSpec;

/// What a knock asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnockRequest {
    /// Ports to open, at most [`super::payload::MAX_PORTS`]; empty asks for all the user's ports.
    /// The server opens only those the user is allowed.
    pub ports: Vec<PortSpec>,
    /// Open for this address instead of the packet's source address (the server decides whether
    /// it honours this, per user).
    pub allow_ip: Option<IpAddr>,
}

/// The random values of one knock. Fresh for every knock: [`Randomness::os`].
#[derive(Clone, PartialEq, Eq)]
pub struct Randomness {
    /// The XChaCha20-Poly1305 nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The packet id in the payload.
    pub packet_id: PacketId,
}

impl Randomness {
    /// Fresh values from the OS random generator.
    pub fn os() -> Result<Self, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        let mut id = [0u8; PACKET_ID_LEN];
        os_random(&mut nonce)?;
        os_random(&mut id)?;
        Ok(Self {
            nonce,
            packet_id: PacketId(id),
        })
    }
}

impl std::fmt::Debug for Randomness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Randomness").finish_non_exhaustive()
    }
}

/// Why a knock could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The request breaks a payload rule (too many ports, a bad address).
    #[error("invalid knock request")]
    Payload(#[source] PayloadError),
    /// The AEAD refused to encrypt (cannot happen with these fixed sizes).
    #[error("encryption failed")]
    Encrypt,
}

/// Builds a knock packet for the time `now_unix` (the client's clock, Unix seconds).
///
/// `totp` is the code a human typed, or for machine-to-machine users the code computed from the
/// stored secret (`Totp::new(&secret)?.code_at(now_unix)`).
pub fn build_knock(
    id: &UserId,
    key: &UserKey,
    totp: &TotpCode,
    request: &KnockRequest,
    now_unix: u64,
    random: &Randomness,
) -> Result<[u8; KNOCK_LEN], PacketError> {
    let payload = Payload {
        timestamp: now_unix,
        totp: totp.clone(),
        ports: request.ports.clone(),
        allow_ip: request.allow_ip,
        packet_id: random.packet_id,
    };
    seal_knock(id, key, step_of(now_unix), &payload, &random.nonce)
}

/// Seals a payload into a knock with the given header time step and nonce. [`build_knock`] is
/// the normal way; this lets tests and test vectors control every input.
pub fn seal_knock(
    id: &UserId,
    key: &UserKey,
    time_step: u64,
    payload: &Payload,
    nonce: &[u8; NONCE_LEN],
) -> Result<[u8; KNOCK_LEN], PacketError> {
    let body = payload.encode().map_err(PacketError::Payload)?;
    seal_plaintext(id, key, time_step, &body, nonce)
}

/// Seals any 176-byte plaintext, valid payload or not: for tests and the fuzzer, which need
/// authenticated packets carrying malformed payloads.
pub fn seal_plaintext(
    id: &UserId,
    key: &UserKey,
    time_step: u64,
    plaintext: &[u8; PLAINTEXT_LEN],
    nonce: &[u8; NONCE_LEN],
) -> Result<[u8; KNOCK_LEN], PacketError> {
    let mut body = Zeroizing::new(*plaintext);
    let header = Header::sealed(key.tag_key().expose_secret(), id.0, time_step, *nonce);
    let header_bytes = header.to_bytes();
    let aead = XChaCha20Poly1305::new(&(*key.aead_key()).into());
    let tag = aead
        .encrypt_in_place_detached(XNonce::from_slice(nonce), &header_bytes, &mut body[..])
        .map_err(|_| PacketError::Encrypt)?;
    let mut packet = [0u8; KNOCK_LEN];
    let parts = [&header_bytes[..], &body[..], tag.as_slice()];
    let mut pos = 0;
    for part in parts {
        let end = pos + part.len();
        if let Some(dst) = packet.get_mut(pos..end) {
            dst.copy_from_slice(part);
        }
        pos = end;
    }
    debug_assert_eq!(pos, KNOCK_LEN);
    Ok(packet)
}

/// Decrypts a knock's body with the user's AEAD, the 64 header bytes as associated data.
/// `None` if authentication fails.
pub(crate) fn open(
    aead: &XChaCha20Poly1305,
    header_bytes: &[u8; HEADER_LEN],
    nonce: &[u8; NONCE_LEN],
    body: &[u8; BODY_LEN],
) -> Option<Zeroizing<[u8; PLAINTEXT_LEN]>> {
    let (ciphertext, tag) = body.split_first_chunk::<PLAINTEXT_LEN>()?;
    let tag: &[u8; AEAD_TAG_LEN] = tag.try_into().ok()?;
    let mut buf = Zeroizing::new(*ciphertext);
    aead.decrypt_in_place_detached(
        XNonce::from_slice(nonce),
        header_bytes,
        &mut buf[..],
        tag.into(),
    )
    .ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use capyknock_common::wire::split_knock;

    use super::*;
    use crate::protocol::totp::Totp;

    #[test]
    fn builds_a_packet_that_opens() {
        let id = UserId([1; 16]);
        let key = UserKey::from_bytes([2; 32]);
        let code: TotpCode = "000042".parse().unwrap();
        let random = Randomness {
            nonce: [3; NONCE_LEN],
            packet_id: PacketId([4; 16]),
        };
        let req = KnockRequest {
            ports: vec![PortSpec::tcp(22)],
            allow_ip: None,
        };
        let packet = build_knock(&id, &key, &code, &req, 1_700_000_000, &random).unwrap();
        let (header_bytes, body) = split_knock(&packet);
        let header = Header::parse(&header_bytes).unwrap();
        assert_eq!(header.user_id, id.0);
        assert_eq!(header.time_step, 1_700_000_000 / 30);
        assert!(header.tag_is_valid(key.tag_key().expose_secret()));
        let aead = XChaCha20Poly1305::new(&(*key.aead_key()).into());
        let plain = open(&aead, &header_bytes, &header.nonce, &body).unwrap();
        let payload = Payload::decode(&plain).unwrap();
        assert_eq!(payload.totp, code);
        assert_eq!(payload.ports, req.ports);
        assert_eq!(payload.timestamp, 1_700_000_000);
        // Another key does not open it.
        let other = XChaCha20Poly1305::new(&(*UserKey::from_bytes([5; 32]).aead_key()).into());
        assert!(open(&other, &header_bytes, &header.nonce, &body).is_none());
    }

    #[test]
    fn too_many_ports_is_a_clear_error() {
        let req = KnockRequest {
            ports: (1..=17).map(PortSpec::tcp).collect(),
            allow_ip: None,
        };
        let code = Totp::new(&crate::protocol::keys::TotpSecret::from_bytes([0; 20]))
            .unwrap()
            .code_at(0);
        let err = build_knock(
            &UserId([0; 16]),
            &UserKey::from_bytes([0; 32]),
            &code,
            &req,
            0,
            &Randomness::os().unwrap(),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            PacketError::Payload(PayloadError::TooManyPorts(17))
        ));
    }

    #[test]
    fn fresh_randomness_differs() {
        let a = Randomness::os().unwrap();
        let b = Randomness::os().unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.packet_id, b.packet_id);
        assert_eq!(format!("{a:?}"), "Randomness { .. }");
    }
}
