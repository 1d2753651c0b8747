//! Private files: the configs (they hold secret keys), the state directory (replay state, bans)
//! and the firewall ledger, written and read the one way that is safe when other local users
//! are hostile.
//!
//! - [`write_atomic`]: a temporary file with a random name is created exclusively (`O_CREAT |
//!   O_EXCL`: a symlink or file planted at that name is never followed or reused) with mode 0600,
//!   written, flushed to disk (fsync), renamed over the target and the directory flushed, so a
//!   crash or a full disk leaves the old file or the new one, never a torn one, and a reader
//!   never sees a partial file.
//! - [`read_private`]: a config is read only when it is a regular file of sane size that its
//!   owner alone can access, owned by us (or root), in a directory nobody else can write to;
//!   every refusal says the command that fixes it.
//! - [`ensure_dir`]: creates a directory with mode 0700, or checks an existing one.
//! - [`read_capped`]: reads a state file with a size cap; [`move_aside`] keeps a damaged file
//!   as `NAME.corrupt` ([`CORRUPT_SUFFIX`]) for inspection.
//!
//! On Windows the mode and owner checks do not exist here: the server build gives every file it
//! writes a protected DACL (SYSTEM, Administrators, the owner: `server::win_acl::protect_file`)
//! instead of mode 0600, and `win_acl::check_private` refuses a server config open to Users or
//! Everyone. The client-only build's files inherit their folder's ACL (the user's profile).
//! A rename over a file that another program holds open can fail there (a clear error, the old
//! file kept); the rest is the same.

use std::{
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
};

/// Suffix of a damaged state file moved aside by [`move_aside`].
pub const CORRUPT_SUFFIX: &str = ".corrupt";

/// Random characters in a temporary file's name.
const TEMP_RANDOM_CHARS: usize = 12;

/// Why a private file or directory was refused or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// Reading failed.
    #[error("cannot read {what} {}{}", path.display(), read_hint(source))]
    Read {
        /// What the file is ("config", "client config", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A directory, device or socket where a file should be.
    #[error("{what} {} is not a regular file: point to the file itself", path.display())]
    NotRegular {
        /// What the file is.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// Larger than the file can sensibly be.
    #[error(
        "{what} {} is {size} bytes, larger than the {max}-byte limit: is it the right file?",
        path.display()
    )]
    TooLarge {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Readable or writable by group or others.
    #[error(
        "{what} {} has mode {mode:04o}: it holds secret keys and must not be accessible by group \
         or others; run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Mode {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Owned by another user, who could change it.
    #[error(
        "{what} {} belongs to uid {owner}, not to {}: that user could change it; run `chown {} {}`",
        path.display(),
        owner_name(*expected),
        owner_name(*expected),
        path.display()
    )]
    Owner {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Who must own it (the user capyknock runs as).
        expected: u32,
    },
    /// A directory others may write to: they could plant or replace files in it.
    #[error(
        "{what} directory {} has mode {mode:04o}: other users could plant or replace files in \
         it; run `chmod {fix} {}`",
        dir.display(),
        dir.display()
    )]
    DirMode {
        /// What the directory holds ("state", "config", ...).
        what: &'static str,
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The chmod argument that fixes it.
        fix: &'static str,
    },
    /// A directory owned by another user, who could replace files in it.
    #[error(
        "{what} directory {} belongs to uid {owner}, not to {}: that user could replace files \
         in it; run `chown {} {}`",
        dir.display(),
        owner_name(*expected),
        owner_name(*expected),
        dir.display()
    )]
    DirOwner {
        /// What the directory holds.
        what: &'static str,
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// Who must own it.
        expected: u32,
    },
    /// The directory could not be created or inspected.
    #[error("cannot create or open {what} directory {}", dir.display())]
    Dir {
        /// What the directory holds.
        what: &'static str,
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What to do about a read error, when the error kind says.
fn read_hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::PermissionDenied => {
            " (permission denied: the file is private to its owner; run this as that user, \
             usually root)"
        }
        _ => "",
    }
}

/// Who else may write to a directory we keep files in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirRule {
    /// Nobody: no group or world write bit at all. For the state directory, where a file another
    /// user planted before our first save (a replay state that forgets every used code) would
    /// be read back.
    OnlyUs,
    /// Nobody may replace our files: no group or world write bit unless the sticky bit is set
    /// (as on `/tmp`, where others cannot rename or delete our files, and a file they plant is
    /// refused by the owner check). For config directories.
    NoReplace,
}

/// `root` for uid 0, else the number (which `chown` accepts).
fn owner_name(uid: u32) -> String {
    if uid == 0 {
        "root".to_owned()
    } else {
        uid.to_string()
    }
}

/// The directory `path` is in (`.` for a bare file name).
#[must_use]
pub fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// The user we run as.
#[cfg(unix)]
fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether `owner` may own our files: we ourselves, or root (who can change anything anyway).
#[cfg(unix)]
fn trusted_owner(owner: u32) -> bool {
    owner == 0 || owner == euid()
}

/// Writes `bytes` to `path` atomically with mode 0600. The directory must exist; see
/// [`write_private`] to create it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, bytes, TEMP_RANDOM_CHARS)
}

/// [`write_atomic`], creating missing parent directories with mode 0700 first (for files the
/// user names, such as a QR code PNG).
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    create_dir_0700(dir_of(path))?;
    write_atomic(path, bytes)
}

fn write_atomic_with(path: &Path, bytes: &[u8], random: usize) -> io::Result<()> {
    let dir = dir_of(path);
    // The temporary file's name: `.NAME.` + `random` random characters + `.tmp`.
    let prefix = format!(
        ".{}.",
        path.file_name()
            .map_or_else(|| "file".into(), |n| n.to_string_lossy())
    );
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp").rand_bytes(random);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    // create_new (`O_EXCL`): an existing name, symlink or not, is an error, never reused. The
    // file is removed again when dropped on an error below.
    let mut tmp = builder.tempfile_in(dir)?;
    // Windows: the new file inherits its folder's entries (Users may read a temp or profile
    // folder); make it private before the bytes go in. The rename keeps this DACL.
    #[cfg(all(windows, feature = "server"))]
    crate::server::win_acl::protect_file(tmp.path())?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
#[expect(
    clippy::unnecessary_wraps,
    reason = "same signature as the unix version"
)]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Windows has no directory fsync; the rename (MoveFileEx with replace) is journalled by NTFS.
    Ok(())
}

/// Creates `dir` and missing parents with mode 0700.
fn create_dir_0700(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates `dir` (and missing parents) with mode 0700, or checks an existing one against
/// `rule` and its owner (us or root). `what` names it in messages ("state", "config").
pub fn ensure_dir(dir: &Path, what: &'static str, rule: DirRule) -> Result<(), PrivateFileError> {
    let io_err = |source| PrivateFileError::Dir {
        what,
        dir: dir.to_owned(),
        source,
    };
    match std::fs::metadata(dir) {
        Ok(_) => check_dir(dir, what, rule),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir_0700(dir).map_err(io_err),
        Err(e) => Err(io_err(e)),
    }
}

/// Checks an existing directory against `rule` and its owner (us or root).
pub fn check_dir(dir: &Path, what: &'static str, rule: DirRule) -> Result<(), PrivateFileError> {
    let meta = std::fs::metadata(dir).map_err(|source| PrivateFileError::Dir {
        what,
        dir: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(PrivateFileError::Dir {
            what,
            dir: dir.to_owned(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let mode = meta.mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        let writable_by_others = mode & 0o022 != 0;
        if writable_by_others && !(rule == DirRule::NoReplace && sticky) {
            return Err(PrivateFileError::DirMode {
                what,
                dir: dir.to_owned(),
                mode,
                fix: match rule {
                    DirRule::OnlyUs => "700",
                    DirRule::NoReplace => "go-w",
                },
            });
        }
        if !trusted_owner(meta.uid()) {
            return Err(PrivateFileError::DirOwner {
                what,
                dir: dir.to_owned(),
                owner: meta.uid(),
                expected: euid(),
            });
        }
    }
    #[cfg(not(unix))]
    let _ = rule;
    Ok(())
}

/// Reads the private text file `path` (a config): `None` when it does not exist. Refused, with
/// the command that fixes it: not a regular file, larger than `max` bytes, accessible by group
/// or others, owned by someone other than us or root, or in a directory others may write to
/// ([`DirRule::NoReplace`]). `what` names the file in messages.
pub fn read_private(
    path: &Path,
    what: &'static str,
    max: u64,
) -> Result<Option<String>, PrivateFileError> {
    let read_err = |source| PrivateFileError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    // Stat before opening: opening a FIFO planted in place of the file would block.
    match std::fs::metadata(path) {
        Ok(meta) => check_file(path, what, max, &meta)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    }
    check_dir(dir_of(path), what, DirRule::NoReplace)?;
    let file = std::fs::File::open(path).map_err(read_err)?;
    // Check again what was opened, in case the file changed in between.
    check_file(path, what, max, &file.metadata().map_err(read_err)?)?;
    let mut text = String::new();
    file.take(max.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > max {
        return Err(PrivateFileError::TooLarge {
            what,
            path: path.to_owned(),
            size: text.len() as u64,
            max,
        });
    }
    Ok(Some(text))
}

fn check_file(
    path: &Path,
    what: &'static str,
    max: u64,
    meta: &std::fs::Metadata,
) -> Result<(), PrivateFileError> {
    if !meta.is_file() {
        return Err(PrivateFileError::NotRegular {
            what,
            path: path.to_owned(),
        });
    }
    if meta.len() > max {
        return Err(PrivateFileError::TooLarge {
            what,
            path: path.to_owned(),
            size: meta.len(),
            max,
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(PrivateFileError::Mode {
                what,
                path: path.to_owned(),
                mode,
            });
        }
        if !trusted_owner(meta.uid()) {
            return Err(PrivateFileError::Owner {
                what,
                path: path.to_owned(),
                owner: meta.uid(),
                expected: euid(),
            });
        }
    }
    Ok(())
}

/// Reads a file we wrote ourselves (state, ledger) into memory: `None` when it does not exist,
/// [`PrivateFileError::TooLarge`] beyond `max` bytes (without reading more than that).
pub fn read_capped(
    path: &Path,
    what: &'static str,
    max: u64,
) -> Result<Option<Vec<u8>>, PrivateFileError> {
    let read_err = |source| PrivateFileError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(PrivateFileError::TooLarge {
            what,
            path: path.to_owned(),
            size: bytes.len() as u64,
            max,
        });
    }
    Ok(Some(bytes))
}

/// Moves a damaged file to `NAME.corrupt` beside it (replacing an older one), so the next save
/// does not destroy the evidence. Where it went, if the move worked.
#[must_use]
pub fn move_aside(path: &Path) -> Option<PathBuf> {
    let mut name = path.file_name()?.to_os_string();
    name.push(CORRUPT_SUFFIX);
    let target = path.with_file_name(name);
    std::fs::rename(path, &target).ok().map(|()| target)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn names(dir: &Path) -> Vec<OsString> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[cfg(unix)]
    fn chmod(p: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn writes_replaces_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/file.toml");
        write_private(&path, b"one").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
            assert_eq!(mode(&dir.path().join("sub")), 0o700);
        }
        // No temporary file left behind.
        assert_eq!(
            names(path.parent().unwrap()),
            vec![OsString::from("file.toml")]
        );
    }

    #[test]
    fn write_atomic_needs_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_atomic(&dir.path().join("missing/f"), b"x").is_err());
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn failure_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a directory: the rename fails, nothing is lost, no temp file stays.
        let target = dir.path().join("taken");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"x").unwrap();
        assert!(write_atomic(&target, b"new").is_err());
        assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"x");
        assert_eq!(names(dir.path()), vec![OsString::from("taken")]);
    }

    /// A local user who can guess the temporary name plants a symlink there, pointing at a
    /// file root would overwrite: the write is refused and the victim is untouched.
    #[cfg(unix)]
    #[test]
    fn a_symlink_at_the_temporary_name_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = dir.path().join("replay.json");
        std::fs::write(&path, b"old").unwrap();
        // With no random characters the temporary name is predictable: `.replay.json..tmp`.
        let planted = dir.path().join(".replay.json..tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let err = write_atomic_with(&path, b"new", 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(planted.is_symlink());
        // A dangling symlink is refused the same way (O_EXCL does not create its target).
        let absent = dir.path().join("absent");
        std::fs::remove_file(&planted).unwrap();
        std::os::unix::fs::symlink(&absent, &planted).unwrap();
        assert!(write_atomic_with(&path, b"new", 0).is_err());
        assert!(!absent.exists());
    }

    /// The fixed temporary names the old writers used (`.NAME.tmp`, `NAME.tmp`, `.NAME.tmpPID`)
    /// are never opened: symlinks planted there stay as they are, their targets untouched.
    #[cfg(unix)]
    #[test]
    fn symlinks_at_the_old_fixed_temporary_names_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = dir.path().join("bans.json");
        for old in [
            ".bans.json.tmp".to_owned(),
            "bans.json.tmp".to_owned(),
            format!(".bans.json.tmp{}", std::process::id()),
        ] {
            std::os::unix::fs::symlink(&victim, dir.path().join(old)).unwrap();
        }
        write_atomic(&path, b"new").unwrap();
        write_atomic(&path, b"newer").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
        assert_eq!(names(dir.path()).len(), 5, "{:?}", names(dir.path()));
    }

    /// A reader running beside the writer only ever sees a complete old or new version.
    #[test]
    fn a_reader_never_sees_a_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let a = vec![b'a'; 256 * 1024];
        let b = vec![b'b'; 300 * 1024];
        write_atomic(&path, &a).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut reads = 0_u32;
                while !done.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                    let got = std::fs::read(&path).unwrap();
                    assert!(got == a || got == b, "torn read of {} bytes", got.len());
                    reads += 1;
                }
                reads
            });
            let mut written = 0;
            for i in 0..100 {
                match write_atomic(&path, if i % 2 == 0 { &b } else { &a }) {
                    Ok(()) => written += 1,
                    // Windows refuses to replace a file another handle has open (Wine does
                    // too): an error, the old file kept, never a torn one.
                    Err(e) if cfg!(windows) && e.kind() == io::ErrorKind::PermissionDenied => {}
                    Err(e) => {
                        // Stop the reader before failing, or the scope waits for it forever.
                        done.store(true, std::sync::atomic::Ordering::Relaxed);
                        panic!("write {i}: {e}");
                    }
                }
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(reader.join().unwrap() > 0);
            assert!(written > 0, "no write went through");
        });
    }

    #[cfg(unix)]
    #[test]
    fn read_private_refuses_what_others_can_access() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        assert!(read_private(&path, "config", 100).unwrap().is_none());
        write_atomic(&path, b"x = 1\n").unwrap();
        assert_eq!(
            read_private(&path, "config", 100).unwrap().as_deref(),
            Some("x = 1\n")
        );
        for m in [0o640, 0o604, 0o660, 0o644] {
            chmod(&path, m);
            let err = read_private(&path, "config", 100).unwrap_err().to_string();
            assert!(
                err.contains(&format!("chmod 600 {}", path.display())),
                "{err}"
            );
        }
        chmod(&path, 0o400);
        assert!(read_private(&path, "config", 100).is_ok());
        // Too large, or not a file.
        assert!(matches!(
            read_private(&path, "config", 3),
            Err(PrivateFileError::TooLarge { .. })
        ));
        assert!(matches!(
            read_private(dir.path(), "config", 100),
            Err(PrivateFileError::NotRegular { .. })
        ));
        // A directory others can write to: they could swap the file.
        chmod(dir.path(), 0o777);
        let err = read_private(&path, "config", 100).unwrap_err().to_string();
        assert!(
            err.contains(&format!("chmod go-w {}", dir.path().display())),
            "{err}"
        );
        // Sticky (like /tmp): others cannot replace our file.
        chmod(dir.path(), 0o1777);
        assert!(read_private(&path, "config", 100).is_ok());
        chmod(dir.path(), 0o700);
    }

    #[cfg(unix)]
    #[test]
    fn a_state_directory_others_can_write_to_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        ensure_dir(&state, "state", DirRule::OnlyUs).unwrap();
        assert_eq!(mode(&state), 0o700);
        ensure_dir(&state, "state", DirRule::OnlyUs).unwrap();
        chmod(&state, 0o755);
        ensure_dir(&state, "state", DirRule::OnlyUs).unwrap();
        for m in [0o777, 0o770, 0o730, 0o1777, 0o702] {
            chmod(&state, m);
            let err = ensure_dir(&state, "state", DirRule::OnlyUs)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("chmod 700 {}", state.display())),
                "{m:o}: {err}"
            );
            assert!(err.starts_with("state directory "), "{err}");
        }
        // A file where the directory should be.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            ensure_dir(&file, "state", DirRule::OnlyUs),
            Err(PrivateFileError::Dir { .. })
        ));
    }

    #[test]
    fn read_capped_and_move_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.json");
        assert!(read_capped(&path, "state", 4).unwrap().is_none());
        assert!(move_aside(&path).is_none());
        std::fs::write(&path, b"1234").unwrap();
        assert_eq!(read_capped(&path, "state", 4).unwrap().unwrap(), b"1234");
        std::fs::write(&path, b"12345").unwrap();
        assert!(matches!(
            read_capped(&path, "state", 4),
            Err(PrivateFileError::TooLarge { size: 5, .. })
        ));
        let kept = move_aside(&path).unwrap();
        assert_eq!(kept, dir.path().join("replay.json.corrupt"));
        assert_eq!(std::fs::read(&kept).unwrap(), b"12345");
        assert!(!path.exists());
    }
}
