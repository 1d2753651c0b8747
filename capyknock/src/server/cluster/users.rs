//! Users from the store (issue 16.5, docs/FLEET.md "Users from the store"): the sealed user
//! record under `PREFIX users/ID`, the seal key that opens it, and how the store's users join
//! the config's. Pure functions, no I/O but the seal key's file; the etcd side is
//! [`super::user_sync`] (the daemon) and `keygen --cluster` (the admin).
//!
//! ```text
//! PREFIX users/ID   value: {"v": 1, "user": PUBLIC, "nonce": B64, "sealed": B64}
//! PUBLIC = {"id", "nickname", "ports", "totp_mode", "access_secs", "allow_ip"}
//! sealed = ChaCha20-Poly1305(seal key, nonce, key (32 bytes) || TOTP secret (20 bytes),
//!                            AD = "capyknock user record v1" 0 ETCD_KEY 0 PUBLIC as JSON)
//! ```
//!
//! The nonce is random (96 bits) for every sealing. The associated data binds the secrets to
//! the etcd key (a record copied to another id does not open) and to every public field (a
//! writer without the seal key cannot change a user's ports, access or nickname: the record
//! then fails to open). The public fields stay readable so that `keygen --cluster` can refuse a
//! taken nickname and an admin can list the users with `etcdctl` without the key.
//!
//! Where the store's users meet the config's ([`merge`]): the config wins. A store record whose
//! id or nickname a config user (or an earlier store record, in key order) already has is
//! refused with an error naming its key, as is one the config could not hold (a knock port, a
//! port outside `protect`, more than [`MAX_USERS`] users in all). The others are unaffected.

use std::{collections::HashSet, fmt, path::Path, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use chacha20poly1305::{AeadInPlace as _, ChaCha20Poly1305, KeyInit as _, Tag};
use zeroize::Zeroizing;

use crate::{
    conf::check_nickname,
    ports::{PortSpec, Protocol},
    protocol::{
        keys::{KeyError, TOTP_SECRET_LEN, TotpSecret, USER_KEY_LEN, UserId, UserKey, os_random},
        users::{AllowIp, TotpMode, User},
    },
    server::config::{ACCESS_RANGE, MAX_USER_PORTS, MAX_USERS, Settings},
};

/// Length of the seal key.
pub const SEAL_KEY_LEN: usize = 32;
/// Largest user record read from the store (a record with [`MAX_USER_PORTS`] ports is about
/// 1.5 kB).
pub const MAX_RECORD_BYTES: usize = 4096;
/// Most user records taken from the store.
pub const MAX_STORE_USERS: usize = MAX_USERS;
/// The record format written and read.
pub const RECORD_VERSION: u8 = 1;
/// Largest seal key file (one line of base64).
const MAX_SEAL_KEY_FILE: u64 = 1024;
/// Length of a ChaCha20-Poly1305 nonce.
const NONCE_LEN: usize = 12;
/// Length of the Poly1305 tag.
const TAG_LEN: usize = 16;
/// Starts the associated data of every sealing.
const AD_LABEL: &[u8] = b"capyknock user record v1";

/// The prefix of every user record.
#[must_use]
pub fn users_prefix(prefix: &str) -> String {
    format!("{prefix}users/")
}

/// The key of `id`'s record.
#[must_use]
pub fn user_key(prefix: &str, id: &UserId) -> String {
    format!("{prefix}users/{id}")
}

/// Why a seal key could not be read, created or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SealKeyError {
    /// The file was refused (others may read or replace it) or could not be read.
    #[error("the seal key (seal_key in [cluster])")]
    File(#[source] crate::private_file::PrivateFileError),
    /// The file does not exist.
    #[error(
        "the seal key {} does not exist: copy it from a node that has it (same path, mode \
         0600), or let the first `capyknock keygen --cluster` create it",
        path.display()
    )]
    Missing {
        /// The file.
        path: std::path::PathBuf,
    },
    /// The file does not hold a key.
    #[error(
        "the seal key {} is not standard base64 of 32 bytes: copy it again from a node that \
         has it",
        path.display()
    )]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
    },
    /// The file could not be created.
    #[error("cannot create the seal key {}", path.display())]
    Create {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The OS random generator failed.
    #[error(transparent)]
    Random(#[from] KeyError),
}

/// The key that seals the users' secrets in the store. Every node with `users_from_store`
/// holds the same one in a file of its own (mode 0600); never printed.
#[derive(Clone)]
pub struct SealKey(Zeroizing<[u8; SEAL_KEY_LEN]>);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<hidden>)")
    }
}

impl SealKey {
    /// A new key from the OS random generator.
    pub fn random() -> Result<Self, KeyError> {
        let mut key = Zeroizing::new([0u8; SEAL_KEY_LEN]);
        os_random(key.as_mut_slice())?;
        Ok(Self(key))
    }

    /// The key as written in its file: standard base64 and a newline.
    #[must_use]
    pub fn to_file_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}\n", B64.encode(self.0.as_slice())))
    }

    /// Parses the file's text (surrounding white space ignored).
    fn parse(text: &str) -> Option<Self> {
        let bytes = Zeroizing::new(B64.decode(text.trim()).ok()?);
        let mut key = Zeroizing::new([0u8; SEAL_KEY_LEN]);
        if bytes.len() != SEAL_KEY_LEN {
            return None;
        }
        key.copy_from_slice(&bytes);
        Some(Self(key))
    }

    /// Reads the key from `path` as the config is read: refused when group or others may read
    /// it, when someone other than us or root owns it, or when others may replace it.
    pub fn read(path: &Path) -> Result<Self, SealKeyError> {
        let text = crate::private_file::read_private(path, "seal key", MAX_SEAL_KEY_FILE)
            .map_err(SealKeyError::File)?
            .ok_or_else(|| SealKeyError::Missing {
                path: path.to_owned(),
            })?;
        let text = Zeroizing::new(text);
        Self::parse(&text).ok_or_else(|| SealKeyError::Invalid {
            path: path.to_owned(),
        })
    }

    /// Creates a new key at `path` (mode 0600, its directory 0700 when created); refused when
    /// the file exists.
    pub fn create(path: &Path) -> Result<Self, SealKeyError> {
        let create = |source| SealKeyError::Create {
            path: path.to_owned(),
            source,
        };
        if path.exists() {
            return Err(create(std::io::ErrorKind::AlreadyExists.into()));
        }
        let key = Self::random()?;
        crate::private_file::write_private(path, key.to_file_text().as_bytes()).map_err(create)?;
        Ok(key)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(self.0.as_slice().into())
    }
}

/// A user's fields anyone who can read the store sees (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicFields {
    /// The user id (32 hex digits), the same as in the record's key.
    pub id: String,
    /// The nickname.
    pub nickname: String,
    /// The ports the user may open (`tcp/22`, ...).
    pub ports: Vec<String>,
    /// `prompt` or `derived`.
    pub totp_mode: TotpMode,
    /// How long a knock opens the ports, in seconds.
    pub access_secs: u64,
    /// Which address a grant opens for.
    pub allow_ip: AllowIp,
}

impl PublicFields {
    /// `user`'s public fields.
    #[must_use]
    pub fn of(user: &User) -> Self {
        Self {
            id: user.id.to_string(),
            nickname: user.nickname.clone(),
            ports: user.ports.iter().map(ToString::to_string).collect(),
            totp_mode: user.totp_mode,
            access_secs: user.access.as_secs(),
            allow_ip: user.allow_ip,
        }
    }
}

/// A user record as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    v: u8,
    user: PublicFields,
    nonce: String,
    sealed: String,
}

/// Why a user record was refused. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Larger than [`MAX_RECORD_BYTES`].
    #[error("the record is larger than {MAX_RECORD_BYTES} bytes")]
    TooLarge,
    /// Not a user record (JSON of the wrong shape, unknown fields, bad base64).
    #[error("malformed user record: {0}")]
    Malformed(String),
    /// A format this version does not read.
    #[error("user record format {0} is not known here (this version reads {RECORD_VERSION})")]
    Version(u8),
    /// The key is not `PREFIX users/ID`, or the record's id is another.
    #[error("the record's id does not match its key")]
    WrongKey,
    /// The seal did not open: another seal key, or the record was changed or moved.
    #[error(
        "the secrets do not open with this node's seal key (another key sealed them, or the \
         record was changed or copied from another key)"
    )]
    Seal,
    /// A public field is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

/// The associated data of the record at `etcd_key` with `public`.
fn associated_data(etcd_key: &str, public: &PublicFields) -> Vec<u8> {
    let mut ad = Vec::with_capacity(256);
    ad.extend_from_slice(AD_LABEL);
    ad.push(0);
    ad.extend_from_slice(etcd_key.as_bytes());
    ad.push(0);
    // Serializing a struct of strings, numbers and unit enums cannot fail; the field order is
    // the struct's, so the bytes depend on the values alone.
    ad.extend_from_slice(&serde_json::to_vec(public).unwrap_or_default());
    ad
}

/// Seals `user` into the record stored at `etcd_key` (which must be its [`user_key`]).
pub fn seal(key: &SealKey, etcd_key: &str, user: &User) -> Result<Vec<u8>, KeyError> {
    let public = PublicFields::of(user);
    let mut nonce = [0u8; NONCE_LEN];
    os_random(&mut nonce)?;
    let mut plain = Zeroizing::new(Vec::with_capacity(USER_KEY_LEN + TOTP_SECRET_LEN));
    plain.extend_from_slice(user.key.expose_secret());
    plain.extend_from_slice(user.totp.expose_secret());
    let ad = associated_data(etcd_key, &public);
    // Encryption fails only for messages beyond ChaCha20's 256 GiB limit.
    let tag = key
        .cipher()
        .encrypt_in_place_detached((&nonce).into(), &ad, &mut plain)
        .unwrap_or_default();
    // `plain` now holds the ciphertext: ciphertext || tag, as the record stores it.
    let mut sealed = plain.to_vec();
    sealed.extend_from_slice(&tag);
    let record = Record {
        v: RECORD_VERSION,
        user: public,
        nonce: B64.encode(nonce),
        sealed: B64.encode(sealed),
    };
    Ok(serde_json::to_vec(&record).unwrap_or_default())
}

/// The public fields of the record at `etcd_key`, without opening it (for `keygen --cluster`,
/// which refuses a taken nickname).
pub fn public_fields(value: &[u8]) -> Result<PublicFields, RecordError> {
    parse_record(value).map(|r| r.user)
}

fn parse_record(value: &[u8]) -> Result<Record, RecordError> {
    if value.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge);
    }
    let record: Record =
        serde_json::from_slice(value).map_err(|e| RecordError::Malformed(e.to_string()))?;
    if record.v != RECORD_VERSION {
        return Err(RecordError::Version(record.v));
    }
    Ok(record)
}

/// Opens the record stored at `etcd_key` (under `prefix`) into a user, checking every field as
/// the config's `[[user]]` is checked.
pub fn open(
    key: &SealKey,
    prefix: &str,
    etcd_key: &str,
    value: &[u8],
) -> Result<User, RecordError> {
    let record = parse_record(value)?;
    let id = etcd_key
        .strip_prefix(&users_prefix(prefix))
        .and_then(|id| id.parse::<UserId>().ok())
        .ok_or(RecordError::WrongKey)?;
    if record.user.id != id.to_string() {
        return Err(RecordError::WrongKey);
    }
    let nonce: [u8; NONCE_LEN] = B64
        .decode(&record.nonce)
        .ok()
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| RecordError::Malformed("nonce is not base64 of 12 bytes".into()))?;
    let sealed = B64
        .decode(&record.sealed)
        .map_err(|_| RecordError::Malformed("sealed is not base64".into()))?;
    let ad = associated_data(etcd_key, &record.user);
    let Some(body_len) = sealed.len().checked_sub(TAG_LEN) else {
        return Err(RecordError::Malformed("sealed is too short".into()));
    };
    let (body, tag) = sealed.split_at(body_len);
    let mut plain = Zeroizing::new(body.to_vec());
    key.cipher()
        .decrypt_in_place_detached((&nonce).into(), &ad, &mut plain, Tag::from_slice(tag))
        .map_err(|_| RecordError::Seal)?;
    let (Some(user_key), Some(totp)) = (
        plain.get(..USER_KEY_LEN),
        plain.get(USER_KEY_LEN..USER_KEY_LEN + TOTP_SECRET_LEN),
    ) else {
        return Err(RecordError::Malformed(
            "sealed secrets of the wrong length".into(),
        ));
    };
    if plain.len() != USER_KEY_LEN + TOTP_SECRET_LEN {
        return Err(RecordError::Malformed(
            "sealed secrets of the wrong length".into(),
        ));
    }
    let mut key_bytes = Zeroizing::new([0u8; USER_KEY_LEN]);
    key_bytes.copy_from_slice(user_key);
    let mut totp_bytes = Zeroizing::new([0u8; TOTP_SECRET_LEN]);
    totp_bytes.copy_from_slice(totp);
    let p = record.user;
    check_nickname(&p.nickname).map_err(RecordError::Invalid)?;
    if p.ports.is_empty() || p.ports.len() > MAX_USER_PORTS {
        return Err(RecordError::Invalid(format!(
            "user {:?} must have 1 to {MAX_USER_PORTS} ports",
            p.nickname
        )));
    }
    let mut ports = std::collections::BTreeSet::new();
    for port in &p.ports {
        let spec = port
            .parse::<PortSpec>()
            .map_err(|e| RecordError::Invalid(e.to_string()))?;
        ports.insert(spec);
    }
    let access = Duration::from_secs(p.access_secs);
    if access < ACCESS_RANGE.0 || access > ACCESS_RANGE.1 {
        return Err(RecordError::Invalid(format!(
            "user {:?}: access of {} s is out of range",
            p.nickname, p.access_secs
        )));
    }
    Ok(User {
        id,
        nickname: p.nickname,
        key: UserKey::from_bytes(*key_bytes),
        totp: TotpSecret::from_bytes(*totp_bytes),
        totp_mode: p.totp_mode,
        ports: ports.into_iter().collect(),
        access,
        allow_ip: p.allow_ip,
    })
}

/// A user opened from the store, with the key it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUser {
    /// `PREFIX users/ID`.
    pub key: String,
    /// The user.
    pub user: User,
}

/// The config's users (those of `settings`) followed by the store's that may join them (see the
/// module docs); each refused store record with why, for the log.
#[must_use]
pub fn merge(settings: &Settings, store: &[StoreUser]) -> (Vec<User>, Vec<(String, String)>) {
    let mut users = settings.users.clone();
    let mut ids: HashSet<UserId> = users.iter().map(|u| u.id).collect();
    let mut nicknames: HashSet<String> = users
        .iter()
        .map(|u| u.nickname.to_ascii_lowercase())
        .collect();
    let config_ids = ids.clone();
    let config_nicknames = nicknames.clone();
    let mut refused = Vec::new();
    for s in store {
        let u = &s.user;
        let nickname = u.nickname.to_ascii_lowercase();
        let why = if config_ids.contains(&u.id) {
            Some(format!(
                "user id {} is also a [[user]] of the config file, which wins: remove one",
                u.id
            ))
        } else if config_nicknames.contains(&nickname) {
            Some(format!(
                "nickname {:?} is also a [[user]] of the config file, which wins: remove one",
                u.nickname
            ))
        } else if ids.contains(&u.id) || nicknames.contains(&nickname) {
            Some(format!(
                "nickname {:?} (or its id) is taken by another record of the store",
                u.nickname
            ))
        } else if users.len() >= MAX_USERS {
            Some(format!("more than {MAX_USERS} users in all"))
        } else {
            port_refusal(settings, u)
        };
        if let Some(why) = why {
            refused.push((s.key.clone(), why));
        } else {
            ids.insert(u.id);
            nicknames.insert(nickname);
            users.push(u.clone());
        }
    }
    (users, refused)
}

/// Why this node cannot give `user` its ports: a knock port, or a port outside `protect`.
fn port_refusal(settings: &Settings, user: &User) -> Option<String> {
    if let Some(p) = user
        .ports
        .iter()
        .find(|p| p.protocol == Protocol::Udp && settings.knock_ports.contains(&p.port))
    {
        return Some(format!(
            "{p} is a knock port of this node: it is never opened"
        ));
    }
    let protect = settings.protect.as_ref()?;
    user.ports.iter().find(|p| !protect.contains(p)).map(|p| {
        format!("{p} is not in this node's [server] protect: add it there or change the user")
    })
}

/// What changed for one user between two sets from the store, for the log (never a secret).
#[must_use]
pub fn describe_change(old: &User, new: &User) -> String {
    let mut what = Vec::new();
    if old.nickname != new.nickname {
        what.push(format!("nickname {} -> {}", old.nickname, new.nickname));
    }
    if old.ports != new.ports {
        let list = |p: &[PortSpec]| {
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        what.push(format!(
            "ports {} -> {}",
            list(&old.ports),
            list(&new.ports)
        ));
    }
    if old.access != new.access {
        what.push(format!(
            "access {}s -> {}s",
            old.access.as_secs(),
            new.access.as_secs()
        ));
    }
    if old.totp_mode != new.totp_mode {
        what.push(format!(
            "totp_mode {} -> {}",
            old.totp_mode.as_str(),
            new.totp_mode.as_str()
        ));
    }
    if old.allow_ip != new.allow_ip {
        what.push(format!(
            "allow_ip {} -> {}",
            old.allow_ip.as_str(),
            new.allow_ip.as_str()
        ));
    }
    if old.key != new.key || old.totp != new.totp {
        what.push("secrets".to_owned());
    }
    if what.is_empty() {
        "nothing".to_owned()
    } else {
        what.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::users::tests::user;

    const PREFIX: &str = "/ck/";

    fn sealed(key: &SealKey, u: &User) -> (String, Vec<u8>) {
        let k = user_key(PREFIX, &u.id);
        let v = seal(key, &k, u).unwrap();
        (k, v)
    }

    #[test]
    fn round_trip_and_no_secret_in_clear() {
        let key = SealKey::random().unwrap();
        let alice = user(1, "alice");
        let (k, v) = sealed(&key, &alice);
        assert_eq!(k, format!("/ck/users/{}", alice.id));
        assert_eq!(open(&key, PREFIX, &k, &v).unwrap(), alice);
        let text = String::from_utf8(v.clone()).unwrap();
        assert!(text.contains("\"nickname\":\"alice\""), "{text}");
        assert!(!text.contains(&alice.key.to_base64_secret()), "{text}");
        assert!(!text.contains(&alice.totp.to_base32_secret()), "{text}");
        assert_eq!(public_fields(&v).unwrap().nickname, "alice");
        // A random nonce: sealing twice gives two records.
        assert_ne!(seal(&key, &k, &alice).unwrap(), v);
    }

    #[test]
    fn wrong_key_is_refused() {
        let (key, other) = (SealKey::random().unwrap(), SealKey::random().unwrap());
        let (k, v) = sealed(&key, &user(1, "alice"));
        assert_eq!(open(&other, PREFIX, &k, &v), Err(RecordError::Seal));
    }

    #[test]
    fn moved_record_is_refused() {
        let key = SealKey::random().unwrap();
        let (alice, bob) = (user(1, "alice"), user(2, "bob"));
        let (_, v) = sealed(&key, &alice);
        // Alice's record under bob's key: the id does not match.
        assert_eq!(
            open(&key, PREFIX, &user_key(PREFIX, &bob.id), &v),
            Err(RecordError::WrongKey)
        );
        // ... and with the id rewritten too, the seal does not open.
        let text = String::from_utf8(v.clone())
            .unwrap()
            .replace(&alice.id.to_string(), &bob.id.to_string());
        assert_eq!(
            open(&key, PREFIX, &user_key(PREFIX, &bob.id), text.as_bytes()),
            Err(RecordError::Seal)
        );
        // Under another prefix (another fleet on the same etcd).
        assert_eq!(
            open(&key, "/other/", &user_key("/other/", &alice.id), &v),
            Err(RecordError::Seal)
        );
    }

    #[test]
    fn changed_public_fields_are_refused() {
        let key = SealKey::random().unwrap();
        let alice = user(1, "alice");
        let (k, v) = sealed(&key, &alice);
        let text = String::from_utf8(v).unwrap();
        for (from, to) in [
            ("\"tcp/22\"", "\"tcp/3389\""),
            ("\"alice\"", "\"mallory\""),
            ("\"access_secs\":3600", "\"access_secs\":604800"),
            ("\"allow_ip\":\"source\"", "\"allow_ip\":\"payload\""),
        ] {
            assert!(text.contains(from), "{from} in {text}");
            let changed = text.replace(from, to);
            assert_eq!(
                open(&key, PREFIX, &k, changed.as_bytes()),
                Err(RecordError::Seal),
                "{to}"
            );
        }
    }

    #[test]
    fn malformed_records_are_refused_never_panic() {
        let key = SealKey::random().unwrap();
        let alice = user(1, "alice");
        let (k, v) = sealed(&key, &alice);
        let text = String::from_utf8(v.clone()).unwrap();
        for bad in [
            b"".to_vec(),
            b"{".to_vec(),
            b"null".to_vec(),
            b"{\"v\":1}".to_vec(),
            text.replace("\"v\":1", "\"v\":2").into_bytes(),
            text.replace("\"v\":1", "\"v\":1,\"extra\":0").into_bytes(),
            text.replace("\"nonce\":\"", "\"nonce\":\"AAAA")
                .into_bytes(),
            vec![b' '; MAX_RECORD_BYTES + 1],
        ] {
            assert!(open(&key, PREFIX, &k, &bad).is_err());
        }
        assert_eq!(
            open(&key, PREFIX, "/ck/users/nothex", &v),
            Err(RecordError::WrongKey)
        );
        assert_eq!(
            open(&key, PREFIX, &text.replace('"', "'"), &v),
            Err(RecordError::WrongKey)
        );
        // Every single bit flipped: refused.
        for i in 0..v.len() {
            for bit in 0..8 {
                let mut b = v.clone();
                b[i] ^= 1 << bit;
                assert!(open(&key, PREFIX, &k, &b).is_err(), "byte {i} bit {bit}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics(value in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let key = SealKey::random().unwrap();
            let _ = open(&key, PREFIX, "/ck/users/00000000000000000000000000000000", &value);
        }
    }

    #[cfg(unix)]
    #[test]
    fn seal_key_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        let err = SealKey::read(&path).unwrap_err();
        assert!(matches!(err, SealKeyError::Missing { .. }), "{err}");
        let key = SealKey::create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(SealKey::create(&path).is_err(), "never overwrites a key");
        let again = SealKey::read(&path).unwrap();
        let alice = user(1, "alice");
        let (k, v) = sealed(&key, &alice);
        assert_eq!(open(&again, PREFIX, &k, &v).unwrap(), alice);
        assert!(!format!("{again:?}").contains(&B64.encode(again.0.as_slice())));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = crate::error_chain::ErrorChain(&SealKey::read(&path).unwrap_err()).to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key\n").unwrap();
        assert!(matches!(
            SealKey::read(&path),
            Err(SealKeyError::Invalid { .. })
        ));
    }

    #[test]
    fn merge_config_wins_and_clashes_are_refused() {
        let settings = crate::server::config::parse(
            Path::new("/x.toml"),
            &format!(
                "[server]\nknock_ports = [62201]\n{}",
                crate::server::config::render_user(&user(1, "alice"))
            ),
        )
        .unwrap();
        let store = |u: User| StoreUser {
            key: user_key(PREFIX, &u.id),
            user: u,
        };
        let mut knock_port_user = user(6, "erin");
        knock_port_user.ports = vec![PortSpec::udp(62201)];
        let (users, refused) = merge(
            &settings,
            &[
                store(user(1, "alice2")),
                store(user(2, "ALICE")),
                store(user(3, "bob")),
                store(user(4, "bob")),
                store(knock_port_user),
                store(user(5, "carol")),
            ],
        );
        let names: Vec<&str> = users.iter().map(|u| u.nickname.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol"]);
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert!(
            refused[0].1.contains("config file, which wins"),
            "{refused:?}"
        );
        assert!(
            refused[1].1.contains("config file, which wins"),
            "{refused:?}"
        );
        assert!(refused[2].1.contains("another record"), "{refused:?}");
        assert!(refused[3].1.contains("knock port"), "{refused:?}");
        assert_eq!(refused[0].0, user_key(PREFIX, &UserId([1; 16])));
    }

    #[test]
    fn changes_are_described_without_secrets() {
        let old = user(1, "alice");
        let mut new = old.clone();
        new.ports = vec![PortSpec::tcp(443)];
        new.key = UserKey::from_bytes([9; 32]);
        let text = describe_change(&old, &new);
        assert_eq!(text, "ports tcp/22,udp/51820 -> tcp/443, secrets");
        assert_eq!(describe_change(&old, &old), "nothing");
    }
}
