//! The state directory: the ban list as a JSON file, and the file helpers the replay state
//! (`server::replay_store`) shares.
//!
//! Files are written atomically ([`crate::private_file::write_atomic`]: a temporary file
//! created exclusively under a random name, flushed to disk, renamed over the old file, the
//! directory flushed), so after a crash or power cut the file is either the old or the new
//! version, never a mix. The files are created with mode 0600 in a directory of mode 0700; an
//! existing directory that others can write to or that is not ours is refused, with the command
//! that fixes it.
//!
//! Loading never stops the daemon: a missing or unreadable file gives a warning in plain words.
//! A corrupt file is kept beside as `*.corrupt` for inspection. A lost ban list is empty (and
//! said so).

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use crate::private_file::{self, DirRule, PrivateFileError};

/// File name of the ban list.
pub const BANS_FILE: &str = "bans.json";
/// Largest state file read; anything bigger is treated as corrupt.
pub const MAX_FILE_BYTES: u64 = 32 << 20;
/// Most bans kept.
pub use crate::firewall::model::MAX_BANS;
/// Version of the ban list file.
pub const BANS_VERSION: u32 = 1;

/// Why the state directory could not be used or a file not saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory could not be created or opened, or others could write to it.
    #[error("cannot use state directory {path}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: PrivateFileError,
    },
    /// A file could not be written (full disk, permissions).
    #[error("cannot save {path}; the previous version is kept")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Serialization failed (cannot happen for these types).
    #[error("cannot serialize {path}")]
    Serialize {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Why a ban was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BanError {
    /// The list holds [`MAX_BANS`] bans already.
    #[error("the ban list is full ({MAX_BANS} addresses); unban some or wait for bans to expire")]
    Full,
}

/// How a file was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// Read and valid.
    Loaded,
    /// Not there (first start, or deleted).
    Missing,
    /// There but unusable; the reason, and where the file was moved if it could be.
    Corrupt {
        /// What is wrong with it.
        reason: String,
        /// Where the bad file now is.
        kept_as: Option<PathBuf>,
    },
}

/// The addresses whose knocks are refused, each until a Unix time or until unbanned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bans {
    entries: BTreeMap<IpAddr, Option<u64>>,
}

impl Bans {
    /// Bans `addr` until `until` (Unix seconds), or until unbanned if `None`. Banning again
    /// replaces the expiry.
    pub fn ban(&mut self, addr: IpAddr, until: Option<u64>) -> Result<(), BanError> {
        let addr = addr.to_canonical();
        if self.entries.len() >= MAX_BANS && !self.entries.contains_key(&addr) {
            return Err(BanError::Full);
        }
        self.entries.insert(addr, until);
        Ok(())
    }

    /// Lifts a ban; whether there was one.
    pub fn unban(&mut self, addr: IpAddr) -> bool {
        self.entries.remove(&addr.to_canonical()).is_some()
    }

    /// Whether `addr` is banned at `now_unix`.
    #[must_use]
    pub fn is_banned(&self, addr: IpAddr, now_unix: u64) -> bool {
        match self.entries.get(&addr.to_canonical()) {
            Some(None) => true,
            Some(Some(until)) => now_unix < *until,
            None => false,
        }
    }

    /// Drops expired bans; whether any was dropped.
    pub fn prune(&mut self, now_unix: u64) -> bool {
        let before = self.entries.len();
        self.entries
            .retain(|_, until| until.is_none_or(|u| now_unix < u));
        self.entries.len() != before
    }

    /// Every ban: address and expiry.
    pub fn iter(&self) -> impl Iterator<Item = (IpAddr, Option<u64>)> + '_ {
        self.entries.iter().map(|(a, u)| (*a, *u))
    }

    /// Number of bans.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The ban list as saved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BansFile {
    version: u32,
    bans: Vec<BanEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BanEntry {
    addr: IpAddr,
    /// Unix seconds; `null` means until unbanned.
    until: Option<u64>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens the directory, creating it (mode 0700) if needed; refuses an existing one that
    /// others can write to or that is not ours.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        private_file::ensure_dir(&dir, "state", DirRule::OnlyUs).map_err(|source| {
            StateError::Dir {
                path: dir.clone(),
                source,
            }
        })?;
        Ok(Self { dir })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Loads the ban list, dropping expired bans; on any problem, warns and returns an empty
    /// list.
    #[must_use]
    pub fn load_bans(&self, now_unix: u64) -> (Bans, LoadOutcome) {
        let path = self.dir.join(BANS_FILE);
        let parsed = read_json::<BansFile>(&path).and_then(|file| match file {
            None => Ok(None),
            Some(f) if f.version != BANS_VERSION => Err(format!(
                "ban list has version {}, this build reads version {BANS_VERSION}",
                f.version
            )),
            Some(f) if f.bans.len() > MAX_BANS => {
                Err(format!("ban list has more than {MAX_BANS} entries"))
            }
            Some(f) => {
                let mut bans = Bans::default();
                for b in f.bans {
                    bans.ban(b.addr, b.until).map_err(|e| e.to_string())?;
                }
                Ok(Some(bans))
            }
        });
        match parsed {
            Ok(Some(mut bans)) => {
                bans.prune(now_unix);
                info!(path = %path.display(), bans = bans.len(), "ban list loaded");
                (bans, LoadOutcome::Loaded)
            }
            Ok(None) => {
                info!(path = %path.display(), "no saved ban list: starting with no bans");
                (Bans::default(), LoadOutcome::Missing)
            }
            Err(reason) => {
                let kept_as = keep_corrupt(&path);
                warn!(
                    path = %path.display(),
                    %reason,
                    kept_as = ?kept_as,
                    "saved ban list is unusable: starting with NO bans; fail2ban will ban again \
                     on the next matching log lines"
                );
                (Bans::default(), LoadOutcome::Corrupt { reason, kept_as })
            }
        }
    }

    /// Saves the ban list atomically.
    pub fn save_bans(&self, bans: &Bans) -> Result<(), StateError> {
        let file = BansFile {
            version: BANS_VERSION,
            bans: bans
                .iter()
                .map(|(addr, until)| BanEntry { addr, until })
                .collect(),
        };
        self.save_json(BANS_FILE, &file)
    }

    fn save_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let mut bytes =
            serde_json::to_vec_pretty(value).map_err(|source| StateError::Serialize {
                path: path.clone(),
                source,
            })?;
        bytes.push(b'\n');
        private_file::write_atomic(&path, &bytes)
            .map_err(|source| StateError::Write { path, source })
    }
}

/// Reads and parses a JSON file: `Ok(None)` if it does not exist, `Err(reason)` if it cannot be
/// read or parsed.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let bytes = match private_file::read_capped(path, "state", MAX_FILE_BYTES) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(PrivateFileError::TooLarge { .. }) => {
            return Err(format!("it is larger than {MAX_FILE_BYTES} bytes"));
        }
        Err(PrivateFileError::Read { source, .. }) => {
            return Err(format!("cannot read it: {source}"));
        }
        Err(e) => return Err(e.to_string()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("it is not valid: {e}"))
}

/// Moves a bad file to `<name>.corrupt` (replacing an older one) so the next save does not
/// destroy the evidence.
pub(super) fn keep_corrupt(path: &Path) -> Option<PathBuf> {
    private_file::move_aside(path)
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        net::{Ipv4Addr, Ipv6Addr},
    };

    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn dir() -> (tempfile::TempDir, StateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path().join("state")).unwrap();
        (tmp, state)
    }

    #[test]
    fn bans_survive_a_restart_and_expire() {
        let (_tmp, dir) = dir();
        let mut bans = Bans::default();
        let v4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let old = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        bans.ban(v4, None).unwrap();
        bans.ban(v6, Some(NOW + 60)).unwrap();
        bans.ban(old, Some(NOW - 1)).unwrap();
        dir.save_bans(&bans).unwrap();
        let (loaded, outcome) = dir.load_bans(NOW);
        assert_eq!(outcome, LoadOutcome::Loaded);
        assert!(loaded.is_banned(v4, NOW + 1_000_000));
        assert!(loaded.is_banned(v6, NOW + 59));
        assert!(!loaded.is_banned(v6, NOW + 60));
        assert!(!loaded.is_banned(old, NOW));
        assert_eq!(loaded.len(), 2);
    }

    #[test]
    fn ban_rules() {
        let mut bans = Bans::default();
        let v4 = Ipv4Addr::new(203, 0, 113, 7);
        bans.ban(IpAddr::V6(v4.to_ipv6_mapped()), None).unwrap();
        assert!(bans.is_banned(IpAddr::V4(v4), NOW));
        assert!(bans.unban(IpAddr::V4(v4)));
        assert!(!bans.unban(IpAddr::V4(v4)));
        assert!(!bans.is_banned(IpAddr::V4(v4), NOW));
        for i in 0..MAX_BANS as u32 {
            bans.ban(IpAddr::V4(Ipv4Addr::from(i)), None).unwrap();
        }
        assert_eq!(bans.ban(IpAddr::V4(v4), None), Err(BanError::Full));
        // Re-banning an existing address still works when full.
        bans.ban(IpAddr::V4(Ipv4Addr::from(5)), Some(1)).unwrap();
        assert!(bans.prune(NOW));
        assert_eq!(bans.len(), MAX_BANS - 1);
    }

    #[test]
    fn corrupt_bans_start_empty() {
        let (_tmp, dir) = dir();
        fs::write(
            dir.path().join(BANS_FILE),
            "{\"version\":1,\"bans\":[{\"addr\":\"x\"}]}",
        )
        .unwrap();
        let (bans, outcome) = dir.load_bans(NOW);
        assert!(bans.is_empty());
        assert!(matches!(outcome, LoadOutcome::Corrupt { .. }));
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_tmp, dir) = dir();
        dir.save_bans(&Bans::default()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.path().join(BANS_FILE)), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn a_state_directory_others_can_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_tmp, dir) = dir();
        for mode in [0o777, 0o775] {
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(mode)).unwrap();
            let err = StateDir::open(dir.path()).unwrap_err();
            let text = crate::error_chain::ErrorChain(&err).to_string();
            assert!(
                text.contains(&format!("chmod 700 {}", dir.path().display())),
                "{text}"
            );
        }
    }

    /// Regression (issue 13.5): a local user plants `.bans.json.tmp` (or `.replay.json.tmp`,
    /// the 0.1 replay state's) as a symlink to a file root would overwrite (the old fixed
    /// temporary name, opened with create+truncate).
    #[cfg(unix)]
    #[test]
    fn a_symlink_planted_at_the_old_temporary_name_is_not_followed() {
        let (tmp, dir) = dir();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        for name in [".bans.json.tmp", ".replay.json.tmp"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        dir.save_bans(&Bans::default()).unwrap();
        crate::server::replay_store::ReplayStore::create(
            dir.path(),
            &crate::protocol::replay::ReplayState::safe_start(NOW),
        )
        .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(dir.load_bans(NOW).1, LoadOutcome::Loaded);
    }

    #[test]
    fn failed_save_keeps_the_old_file() {
        // The directory vanishes under the daemon, as a failing disk would make it (and, unlike
        // permissions, also when run as root): the save fails and says the old file is kept.
        let (tmp, dir) = dir();
        dir.save_bans(&Bans::default()).unwrap();
        let moved = tmp.path().join("moved");
        fs::rename(dir.path(), &moved).unwrap();
        let mut bans = Bans::default();
        bans.ban(IpAddr::V4(Ipv4Addr::LOCALHOST), None).unwrap();
        let err = dir.save_bans(&bans).unwrap_err();
        assert!(
            err.to_string().contains("previous version is kept"),
            "{err}"
        );
        fs::rename(&moved, dir.path()).unwrap();
        assert_eq!(dir.load_bans(NOW), (Bans::default(), LoadOutcome::Loaded));
    }
}
