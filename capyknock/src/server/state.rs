//! The state directory (`state_dir`, default `/var/lib/capyknock`): created mode 0700, and
//! refused when it exists but others can write to it or it is not ours. What lives in it has
//! its own module: the replay state (`server::replay_store`, `replay.slots`), the ban list
//! (`firewall::bans_file`, `bans.json`), the ledger of timer-driven firewall backends
//! (`firewall::persist`). All of them write through [`crate::private_file`] (exclusive
//! temporary file, fsync, rename, directory fsync), and a damaged file is moved aside as
//! `*.corrupt` for inspection ([`keep_corrupt`]); loading never stops the daemon.

use std::path::{Path, PathBuf};

use crate::private_file::{self, DirRule, PrivateFileError};

/// Largest state file read; anything bigger is treated as corrupt.
pub const MAX_FILE_BYTES: u64 = 32 << 20;

/// Why the state directory could not be used.
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
}

/// Moves a bad file to `<name>.corrupt` (replacing an older one) so the next save does not
/// destroy the evidence.
pub(super) fn keep_corrupt(path: &Path) -> Option<PathBuf> {
    private_file::move_aside(path)
}

// Every test here checks Unix file modes or the replay file's Unix layout.
#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::fs;

    use super::*;
    use crate::{firewall::bans_file, protocol::replay::ReplayState, server::replay_store};

    fn dir() -> (tempfile::TempDir, StateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path().join("state")).unwrap();
        (tmp, state)
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_tmp, dir) = dir();
        bans_file::save(&bans_file::path(dir.path()), std::iter::empty()).unwrap();
        replay_store::ReplayStore::create(dir.path(), &ReplayState::safe_start(0), 0).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.path().join(bans_file::FILE)), 0o600);
        assert_eq!(mode(&dir.path().join(replay_store::FILE)), 0o600);
    }

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
    #[test]
    fn a_symlink_planted_at_the_old_temporary_name_is_not_followed() {
        let (tmp, dir) = dir();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        for name in [".bans.json.tmp", ".replay.json.tmp"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        let bans = bans_file::path(dir.path());
        bans_file::save(&bans, std::iter::empty()).unwrap();
        replay_store::ReplayStore::create(dir.path(), &ReplayState::safe_start(0), 0).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(bans_file::load(&bans).is_empty());
        assert!(bans.exists());
    }
}
