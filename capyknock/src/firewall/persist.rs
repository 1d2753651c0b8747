//! The ledger on disk, for backends whose firewall cannot expire rules by itself (Windows
//! Firewall, exec): a small JSON file in the state directory, written atomically (temporary
//! file, fsync, rename, fsync of the directory) so a crash or a full disk leaves either the old
//! or the new file, never a torn one. On start the daemon reads it back and closes what expired
//! while it was down.

use std::{
    fs::{self, File},
    io::{self, Read as _, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::model::{Ban, Ledger};
use crate::ports::PortSpec;

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
            })
            .collect(),
        bans: ledger
            .bans()
            .map(|b| BanRecord {
                addr: b.addr,
                until_ms: b.until.map(to_ms),
            })
            .collect(),
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
    let read_err = |source| PersistError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(PersistError::Corrupt {
            path: path.to_owned(),
            why: format!("larger than {MAX_FILE} bytes"),
        });
    }
    decode(&bytes, backend, path, now).map(Some)
}

/// Writes the ledger atomically: `path.tmp`, fsync, rename over `path`, fsync the directory.
pub fn save(path: &Path, backend: &str, ledger: &Ledger) -> Result<(), PersistError> {
    let write_err = |source| PersistError::Write {
        path: path.to_owned(),
        source,
    };
    let bytes = encode(ledger, backend);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = create_private(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)
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

/// Creates a fresh file readable only by its owner (the ledger lists users' addresses). A
/// leftover temporary file is removed first and the new one is created exclusively, so a
/// symlink planted at that path is never followed.
fn create_private(path: &Path) -> io::Result<File> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
}

#[cfg(unix)]
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
#[expect(
    clippy::unnecessary_wraps,
    reason = "same signature as the unix version"
)]
fn sync_dir(_path: &Path) -> io::Result<()> {
    // Windows has no directory fsync; the rename (MoveFileEx with replace) is atomic on NTFS.
    Ok(())
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
                },
                PortGrant {
                    addr: "2001:db8::1".parse().unwrap(),
                    protocol: Protocol::Udp,
                    port: 51820,
                    until: t(10),
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
        assert_eq!(back, l);
        let expired = back.take_expired(t(30), |_| false);
        assert_eq!(expired.grants.len(), 1);
        assert_eq!(expired.bans.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!dir.path().join("firewall-exec.json.tmp").exists());
        delete(&path).unwrap();
        delete(&path).unwrap();
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
