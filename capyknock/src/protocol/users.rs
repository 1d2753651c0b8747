//! The server's users: who may knock, with which keys, for which ports, for how long, and for
//! which address. [`Users`] is the lookup table the verifier uses; it derives each user's keys
//! once when it is built, not per packet.

use std::{collections::HashMap, fmt, time::Duration};

use chacha20poly1305::{KeyInit as _, XChaCha20Poly1305};

use super::{
    keys::{TagKey, TotpSecret, UserId, UserKey},
    totp::{Totp, TotpError},
};
use crate::ports::PortSpec;

/// How a user's TOTP code is produced. The server checks both the same way. Spelt `prompt` and
/// `derived` in both configs (`totp_mode`) and on the command line (`keygen --totp-mode`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
    strum::EnumString,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum TotpMode {
    /// A person types the code from an authenticator app (scan the QR code).
    #[default]
    Prompt,
    /// The client computes the code from the secret stored in its profile (machine-to-machine
    /// users such as backup jobs and CI).
    Derived,
}

impl TotpMode {
    /// Name as written in configs and on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Which address a grant opens the firewall for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllowIp {
    /// The packet's source address (default). An address in the payload is ignored.
    #[default]
    Source,
    /// The address stated in the encrypted payload if there is one, else the source address.
    Payload,
    /// The payload must state an address and it must equal the packet's source address: a
    /// man in the middle who rewrites the source address gets nothing.
    RequireMatch,
}

impl AllowIp {
    /// Name as written in configs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            AllowIp::Source => "source",
            AllowIp::Payload => "payload",
            AllowIp::RequireMatch => "require-match",
        }
    }
}

/// One user as the server knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Random opaque id, sent in clear in every knock.
    pub id: UserId,
    /// Name for humans (logs, status); never sent on the wire.
    pub nickname: String,
    /// The 256-bit user key.
    pub key: UserKey,
    /// The TOTP secret.
    pub totp: TotpSecret,
    /// Whether a human types the code or the client derives it.
    pub totp_mode: TotpMode,
    /// Ports the user may open. A knock may ask for a subset; an empty request means all.
    pub ports: Vec<PortSpec>,
    /// How long a grant lasts.
    pub access: Duration,
    /// Which address a grant opens for.
    pub allow_ip: AllowIp,
}

/// Why a user table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Two users share an id.
    #[error("user id {id} is used by both {first:?} and {second:?}: every user needs their own id")]
    DuplicateId {
        /// The id.
        id: UserId,
        /// Nickname of the first user with it.
        first: String,
        /// Nickname of the second.
        second: String,
    },
    /// A TOTP secret was refused by totp-rs.
    #[error("user {nickname:?}: TOTP secret unusable")]
    Totp {
        /// The user.
        nickname: String,
        /// The cause.
        #[source]
        source: TotpError,
    },
}

/// A user with the key material the verifier needs, derived once.
pub(crate) struct Entry {
    pub(crate) user: User,
    pub(crate) tag_key: TagKey,
    pub(crate) aead: XChaCha20Poly1305,
    pub(crate) totp: Totp,
}

/// The users, looked up by id.
pub struct Users {
    entries: Vec<Entry>,
    by_id: HashMap<UserId, usize>,
}

impl Users {
    /// Builds the table; duplicate ids are refused.
    pub fn new(users: Vec<User>) -> Result<Self, UsersError> {
        let mut by_id = HashMap::with_capacity(users.len());
        let mut entries: Vec<Entry> = Vec::with_capacity(users.len());
        for user in users {
            if let Some(&i) = by_id.get(&user.id) {
                let first = entries
                    .get(i)
                    .map(|e: &Entry| e.user.nickname.clone())
                    .unwrap_or_default();
                return Err(UsersError::DuplicateId {
                    id: user.id,
                    first,
                    second: user.nickname,
                });
            }
            let totp = Totp::new(&user.totp).map_err(|source| UsersError::Totp {
                nickname: user.nickname.clone(),
                source,
            })?;
            let aead = XChaCha20Poly1305::new(&(*user.key.aead_key()).into());
            by_id.insert(user.id, entries.len());
            entries.push(Entry {
                tag_key: user.key.tag_key(),
                aead,
                totp,
                user,
            });
        }
        Ok(Self { entries, by_id })
    }

    /// The user with this id.
    #[must_use]
    pub fn get(&self, id: &UserId) -> Option<&User> {
        self.entry(id).map(|e| &e.user)
    }

    pub(crate) fn entry(&self, id: &UserId) -> Option<&Entry> {
        self.by_id.get(id).and_then(|&i| self.entries.get(i))
    }

    /// Every user, in the order given to [`Users::new`].
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.entries.iter().map(|e| &e.user)
    }

    /// Every user's id and pre-filter tag key, for the kernel's user map.
    pub fn tag_keys(&self) -> impl Iterator<Item = (&UserId, &TagKey)> {
        self.entries.iter().map(|e| (&e.user.id, &e.tag_key))
    }

    /// Number of users.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no users.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (e.user.id, &e.user.nickname)))
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A test user with fixed secrets derived from `n`.
    pub(crate) fn user(n: u8, nickname: &str) -> User {
        User {
            id: UserId([n; 16]),
            nickname: nickname.to_owned(),
            key: UserKey::from_bytes([n.wrapping_add(1); 32]),
            totp: TotpSecret::from_bytes([n.wrapping_add(2); 20]),
            totp_mode: TotpMode::Prompt,
            ports: vec![PortSpec::tcp(22), PortSpec::udp(51820)],
            access: Duration::from_hours(1),
            allow_ip: AllowIp::Source,
        }
    }

    #[test]
    fn lookup_by_id() {
        let users = Users::new(vec![user(1, "alice"), user(2, "bob")]).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users.get(&UserId([2; 16])).unwrap().nickname, "bob");
        assert!(users.get(&UserId([3; 16])).is_none());
        assert_eq!(users.tag_keys().count(), 2);
        let (id, key) = users.tag_keys().next().unwrap();
        assert_eq!(*id, UserId([1; 16]));
        assert_eq!(*key, UserKey::from_bytes([2; 32]).tag_key());
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let err = Users::new(vec![user(1, "alice"), user(2, "bob"), user(1, "carol")]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, UsersError::DuplicateId { .. }));
        assert!(msg.contains("alice") && msg.contains("carol"), "{msg}");
    }

    #[test]
    fn debug_shows_names_not_secrets() {
        let users = Users::new(vec![user(1, "alice")]).unwrap();
        let text = format!("{users:?} {:?}", users.get(&UserId([1; 16])).unwrap());
        assert!(text.contains("alice"));
        assert!(!text.contains("AgICAgIC"), "{text}"); // base64 of the key bytes
        assert!(text.contains("redacted"));
    }

    #[test]
    fn modes_serialize_as_config_words() {
        assert_eq!(
            serde_json::to_string(&AllowIp::RequireMatch).unwrap(),
            "\"require-match\""
        );
        assert_eq!(
            serde_json::to_string(&TotpMode::Derived).unwrap(),
            "\"derived\""
        );
        assert_eq!(AllowIp::default(), AllowIp::Source);
        assert_eq!(TotpMode::default(), TotpMode::Prompt);
    }
}
