//! Files of a lab: a temporary directory removed on drop, private (0600) config files, and where
//! the workspace's build puts the `capyknock` binary.

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use crate::{Error, Result};

/// A directory removed (with everything in it) on drop.
#[derive(Debug)]
pub struct TempDir {
    /// Where it is.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/<prefix><our pid>` with mode 0700, replacing a leftover of the same
    /// name ([`crate::netns::remove_stale`] finds the ones of killed processes by that pid).
    pub fn for_process(prefix: &str) -> Result<Self> {
        Self::create(
            std::env::temp_dir().join(format!("{prefix}{}", std::process::id())),
            0o700,
        )
    }

    /// Creates `path` with `mode`, replacing a leftover of the same name.
    pub fn create(path: PathBuf, mode: u32) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(&path)
            .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
        // The umask may have taken bits away.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| Error::io(format!("cannot chmod {}", path.display()), e))?;
        Ok(Self { path })
    }

    /// A path inside the directory.
    #[must_use]
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Creates `path` (it must not exist: a planted file or link is refused) with mode 0600 and
/// `bytes` in it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// Replaces `path` with a private (0600) file holding `bytes`, atomically: written beside it
/// as `<path>.new`, then renamed over it.
pub fn replace_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("cannot rename {} into place", tmp.display()), e))
}

/// `path` as UTF-8 (every path of a lab is one we made).
pub fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| Error::Other(format!("{} is not UTF-8", path.display())))
}

/// The workspace root (the parent of `testkit/`).
#[must_use]
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `target/` in the workspace.
#[must_use]
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Where `cargo build -p capyknock` puts the binary for `profile` (`debug`, `release`).
#[must_use]
pub fn capyknock_binary(profile: &str) -> PathBuf {
    target_dir().join(profile).join("capyknock")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn temp_dir_has_its_mode_and_is_removed_on_drop() {
        let path = {
            let dir = TempDir::for_process("testkit-files-test-").unwrap();
            let mode = std::fs::metadata(&dir.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
            write_private(&dir.file("f"), b"x").unwrap();
            assert!(write_private(&dir.file("f"), b"y").is_err(), "create_new");
            let mode = std::fs::metadata(dir.file("f"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            replace_private(&dir.file("f"), b"z").unwrap();
            assert_eq!(std::fs::read(dir.file("f")).unwrap(), b"z");
            assert!(!dir.file("f.new").exists());
            dir.path.clone()
        };
        assert!(!path.exists());
        let name = format!("testkit-files-test-755-{}", std::process::id());
        let open = TempDir::create(std::env::temp_dir().join(name), 0o755).unwrap();
        let mode = std::fs::metadata(&open.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn the_binary_is_under_the_target_dir() {
        assert!(capyknock_binary("debug").ends_with("debug/capyknock"));
        assert!(workspace_root().join("Cargo.toml").exists());
    }
}
