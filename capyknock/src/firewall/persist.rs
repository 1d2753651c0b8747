//! The ledger on disk, for backends whose firewall cannot expire rules by itself (Windows
//! Firewall, exec): a small JSON file in the state directory, written atomically
//! ([`crate::private_file::write_atomic`]: exclusive temporary file, fsync, rename, fsync of the
//! directory) so a crash or a full disk leaves either the old or the new file, never a torn one.
//! On start the daemon reads it back and closes what expired while it was down. Bans are not
//! kept here but in `bans.json` for every backend ([`super::bans_file`]); bans found in a ledger
//! file of capyknock 0.1 are still read.

use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::model::{Ban, Ledger};
use crate::{
    ports::PortSpec,
    private_file::{self, PrivateFileError},
};

/// Format version written in the file.
const VERSION: u32 = 1;

/// Largest ledger file read back (a full ledger is about 10 MB; anything larger is not ours).
const MAX_FILE: u64 = 32 * 1024 * 1024;

/// Why the ledger file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a ledger this version understands.
    #[error("{} is damaged or not a capyknock firewall ledger ({why})", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Writing failed (full disk, permissions).
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    version: u32,
    backend: String,
    grants: Vec<GrantRecord>,
    bans: Vec<BanRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRecord {
    addr: IpAddr,
    port: PortSpec,
    /// Milliseconds since the Unix epoch.
    until_ms: u64,
    /// Who knocked for it (absent in files of capyknock 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<OwnerRecord>,
}

/// A grant's owner as saved.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerRecord {
    user: crate::protocol::keys::UserId,
    nickname: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRecord {
    addr: IpAddr,
    until_ms: Option<u64>,
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The ledger file of `backend` in `state_dir`.
#[must_use]
pub fn ledger_path(state_dir: &Path, backend: &str) -> PathBuf {
    state_dir.join(format!("firewall-{backend}.json"))
}

/// Serializes `ledger` for `backend`.
fn encode(ledger: &Ledger, backend: &str) -> Vec<u8> {
    let file = FileV1 {
        version: VERSION,
        backend: backend.to_owned(),
        grants: ledger
            .grants()
            .map(|g| GrantRecord {
                addr: g.addr,
                port: g.key().port_spec(),
                until_ms: to_ms(g.until),
                owner: g.owner.map(|o| OwnerRecord {
                    user: o.user,
                    nickname: o.nickname().to_owned(),
                }),
            })
            .collect(),
        // Bans live in `bans.json` (their one store, `bans_file`); the field stays, empty, so
        // older versions can still read the file, and bans in files they wrote are read back.
        bans: Vec::new(),
    };
    // Serializing plain structs of numbers and strings into memory cannot fail.
    serde_json::to_vec_pretty(&file).unwrap_or_default()
}

/// Parses a ledger file; entries already expired at `now` are kept so the caller can close
/// them (expiries are capped at `now` + the longest grant).
fn decode(
    bytes: &[u8],
    backend: &str,
    path: &Path,
    now: SystemTime,
) -> Result<Ledger, PersistError> {
    let corrupt = |why: String| PersistError::Corrupt {
        path: path.to_owned(),
        why,
    };
    let file: FileV1 = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != VERSION {
        return Err(corrupt(format!(
            "version {}, expected {VERSION}",
            file.version
        )));
    }
    if file.backend != backend {
        return Err(corrupt(format!(
            "written by the {} backend, not {backend}",
            file.backend
        )));
    }
    let mut ledger = Ledger::new();
    for g in file.grants {
        let grant = super::model::PortGrant {
            addr: g.addr,
            protocol: g.port.protocol,
            port: g.port.port,
            until: from_ms(g.until_ms.max(1)),
            owner: g
                .owner
                .map(|o| super::model::Owner::new(o.user, &o.nickname)),
        };
        ledger.insert_grant(grant, now);
    }
    for b in file.bans {
        ledger.insert_ban(
            Ban {
                addr: b.addr,
                until: b.until_ms.map(|ms| from_ms(ms.max(1))),
            },
            now,
        );
    }
    Ok(ledger)
}

/// Reads the ledger file, or `None` when there is none.
pub fn load(path: &Path, backend: &str, now: SystemTime) -> Result<Option<Ledger>, PersistError> {
    let bytes = match private_file::read_capped(path, "firewall ledger", MAX_FILE) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(PrivateFileError::Read { source, .. }) => {
            return Err(PersistError::Read {
                path: path.to_owned(),
                source,
            });
        }
        Err(_) => {
            return Err(PersistError::Corrupt {
                path: path.to_owned(),
                why: format!("larger than {MAX_FILE} bytes"),
            });
        }
    };
    decode(&bytes, backend, path, now).map(Some)
}

/// Writes the ledger atomically, mode 0600 (it lists users' addresses).
pub fn save(path: &Path, backend: &str, ledger: &Ledger) -> Result<(), PersistError> {
    private_file::write_atomic(path, &encode(ledger, backend)).map_err(|source| {
        PersistError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// Deletes the ledger file (after `firewall remove`); a missing file is fine.
pub fn delete(path: &Path) -> Result<(), PersistError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PersistError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{firewall::model::PortGrant, ports::Protocol};

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn sample() -> Ledger {
        let mut l = Ledger::new();
        l.merge_grants(
            &[
                PortGrant {
                    addr: "192.0.2.1".parse().unwrap(),
                    protocol: Protocol::Tcp,
                    port: 22,
                    until: t(60),
                    owner: Some(crate::firewall::Owner::new(
                        crate::protocol::keys::UserId([7; 16]),
                        "alice",
                    )),
                },
                PortGrant {
                    addr: "2001:db8::1".parse().unwrap(),
                    protocol: Protocol::Udp,
                    port: 51820,
                    until: t(10),
                    owner: None,
                },
            ],
            t(0),
        )
        .unwrap();
        l.set_ban(
            Ban {
                addr: "198.51.100.7".parse().unwrap(),
                until: None,
            },
            t(0),
        )
        .unwrap();
        l.set_ban(
            Ban {
                addr: "2001:db8::66".parse().unwrap(),
                until: Some(t(5)),
            },
            t(0),
        )
        .unwrap();
        l
    }

    #[test]
    fn round_trip_keeps_expired_entries_for_closing() {
        let dir = tempfile::tempdir().unwrap();
        let path = ledger_path(dir.path(), "exec");
        assert!(load(&path, "exec", t(0)).unwrap().is_none());
        let l = sample();
        save(&path, "exec", &l).unwrap();
        let mut back = load(&path, "exec", t(30)).unwrap().unwrap();
        assert_eq!(
            back.grants().collect::<Vec<_>>(),
            l.grants().collect::<Vec<_>>()
        );
        // Bans are kept in bans.json, their one store, not here.
        assert_eq!(back.ban_count(), 0);
        let expired = back.take_expired(t(30), |_| false);
        assert_eq!(expired.grants.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        delete(&path).unwrap();
        delete(&path).unwrap();
    }

    #[test]
    fn owners_survive_and_files_without_them_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = ledger_path(dir.path(), "exec");
        save(&path, "exec", &sample()).unwrap();
        let back = load(&path, "exec", t(0)).unwrap().unwrap();
        let owners: Vec<_> = back
            .grants()
            .map(|g| g.owner.map(|o| o.nickname().to_owned()))
            .collect();
        assert!(owners.contains(&Some("alice".to_owned())), "{owners:?}");
        // A capyknock 0.1 file: no owner field.
        fs::write(
            &path,
            br#"{"version":1,"backend":"exec","grants":[{"addr":"192.0.2.1","port":"tcp/22","until_ms":1800000060000}],"bans":[]}"#,
        )
        .unwrap();
        let old = load(&path, "exec", t(0)).unwrap().unwrap();
        assert_eq!(old.grants().next().unwrap().owner, None);
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let path = ledger_path(dir.path(), "exec");
        std::os::unix::fs::symlink(&victim, dir.path().join("firewall-exec.json.tmp")).unwrap();
        save(&path, "exec", &sample()).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(load(&path, "exec", t(0)).unwrap().is_some());
    }

    #[test]
    fn damaged_or_foreign_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = ledger_path(dir.path(), "exec");
        for junk in [
            &b"{"[..],
            b"[]",
            b"{\"version\":2,\"backend\":\"exec\",\"grants\":[],\"bans\":[]}",
            b"",
        ] {
            fs::write(&path, junk).unwrap();
            assert!(
                matches!(load(&path, "exec", t(0)), Err(PersistError::Corrupt { .. })),
                "{}",
                String::from_utf8_lossy(junk)
            );
        }
        save(&path, "windows", &sample()).unwrap();
        assert!(matches!(
            load(&path, "exec", t(0)),
            Err(PersistError::Corrupt { .. })
        ));
    }

    #[test]
    fn unwritable_directory_is_an_error_not_a_panic() {
        let path = Path::new("/nonexistent-capyknock-dir/firewall-exec.json");
        assert!(matches!(
            save(path, "exec", &sample()),
            Err(PersistError::Write { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode(&bytes, "exec", Path::new("x"), t(0));
        }
    }
}
