//! The ban list on disk: `bans.json` in the state directory, kept by the firewall facade for
//! every backend, because bans must outlive a reboot that empties the firewall (nftables holds
//! no state across one). The format is capyknock 0.1's, so existing files keep working:
//!
//! ```json
//! {"version": 1, "bans": [{"addr": "203.0.113.7", "until": 1767225600}, {"addr": "2001:db8::7", "until": null}]}
//! ```
//!
//! `until` is Unix seconds, `null` for a ban until unbanned. Written atomically with mode 0600
//! ([`crate::private_file::write_atomic`]); a damaged file is moved aside (`.corrupt`) and the
//! daemon starts with no bans, saying so (fail2ban bans again on the next matching lines).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::model::{Ban, MAX_BANS};
use crate::private_file::{self, PrivateFileError};

/// File name in the state directory.
pub const FILE: &str = "bans.json";
/// Version written in the file.
pub const VERSION: u32 = 1;
/// Largest file read (a full list is about 4 MB).
const MAX_FILE: u64 = 32 << 20;

/// The file as saved.
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

/// Why the ban list could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot save the ban list {}; the previous version is kept", path.display())]
pub struct SaveError {
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// The file's path in `state_dir`.
#[must_use]
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Reads the saved bans. Never fails: a missing file is no bans; a damaged one is moved aside
/// and logged, and is no bans too.
#[must_use]
pub fn load(path: &Path) -> Vec<Ban> {
    match read(path) {
        Ok(Some(bans)) => {
            tracing::info!(path = %path.display(), bans = bans.len(), "ban list loaded");
            bans
        }
        Ok(None) => {
            tracing::info!(path = %path.display(), "no saved ban list: starting with no bans");
            Vec::new()
        }
        Err(reason) => {
            let kept_as = private_file::move_aside(path);
            tracing::warn!(
                path = %path.display(),
                %reason,
                kept_as = %crate::log_fields::OptPath(kept_as.as_deref()),
                "saved ban list is unusable: starting with NO bans; fail2ban will ban again on \
                 the next matching log lines"
            );
            Vec::new()
        }
    }
}

fn read(path: &Path) -> Result<Option<Vec<Ban>>, String> {
    let bytes = match private_file::read_capped(path, "ban list", MAX_FILE) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(PrivateFileError::Read { source, .. }) => {
            return Err(format!("cannot read it: {source}"));
        }
        Err(e) => return Err(e.to_string()),
    };
    let file: BansFile =
        serde_json::from_slice(&bytes).map_err(|e| format!("it is not valid: {e}"))?;
    if file.version != VERSION {
        return Err(format!(
            "ban list has version {}, this build reads version {VERSION}",
            file.version
        ));
    }
    if file.bans.len() > MAX_BANS {
        return Err(format!("ban list has more than {MAX_BANS} entries"));
    }
    Ok(Some(
        file.bans
            .into_iter()
            .map(|b| Ban {
                addr: b.addr,
                until: b
                    .until
                    .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            })
            .collect(),
    ))
}

/// Writes `bans` atomically.
pub fn save(path: &Path, bans: impl Iterator<Item = Ban>) -> Result<(), SaveError> {
    let file = BansFile {
        version: VERSION,
        bans: bans
            .map(|b| BanEntry {
                addr: b.addr,
                // Rounded up: a ban never ends early because it was saved.
                until: b.until.map(|u| {
                    u.duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
                }),
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
    bytes.push(b'\n');
    private_file::write_atomic(path, &bytes).map_err(|source| SaveError {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn bans_round_trip_in_the_0_1_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        assert!(load(&path).is_empty());
        let until = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + 7);
        let bans = [
            Ban {
                addr: "203.0.113.7".parse().unwrap(),
                until: None,
            },
            Ban {
                addr: "2001:db8::7".parse().unwrap(),
                until: Some(until),
            },
        ];
        save(&path, bans.iter().copied()).unwrap();
        assert_eq!(load(&path), bans);
        // The file capyknock 0.1 wrote reads the same.
        fs::write(
            &path,
            r#"{"version":1,"bans":[{"addr":"203.0.113.7","until":null},{"addr":"2001:db8::7","until":1800000007}]}"#,
        )
        .unwrap();
        assert_eq!(load(&path), bans);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            save(&path, bans.iter().copied()).unwrap();
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn a_damaged_file_is_moved_aside_and_means_no_bans() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path());
        for junk in [
            &b"{\"version\":1,\"bans\":[{\"addr\":\"x\"}]}"[..],
            b"{\"version\":2,\"bans\":[]}",
            b"",
        ] {
            fs::write(&path, junk).unwrap();
            assert!(load(&path).is_empty());
            assert!(!path.exists(), "not moved aside");
        }
    }

    #[test]
    fn a_failed_save_says_the_old_file_is_kept() {
        let err = save(
            Path::new("/nonexistent-capyknock-dir/bans.json"),
            std::iter::empty(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("previous version is kept"),
            "{err}"
        );
    }
}
