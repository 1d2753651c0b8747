//! Ownership checks of private files (issue 13.5), which need root to hand a file to another
//! user: a server config, a client config, a config directory and a state directory owned by
//! someone else (uid 65534, `nobody`) are refused, each with the `chown` that fixes it, and
//! accepted again once root owns them. No network.

use std::{
    os::unix::fs::{PermissionsExt as _, chown},
    path::Path,
    process::Command,
};

use capyknock::{
    private_file::{self, DirRule},
    server::{config, state::StateDir},
};
use capyknock_testkit::process::output_text as text;
use capyknock_tests::{capyknock_bin, require_root};

const NOBODY: u32 = 65534;

fn give_to(path: &Path, uid: u32) {
    chown(path, Some(uid), None).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

/// Regression (issue 13.5): a config owned by another user, mode 0600, was accepted although
/// that user can rewrite it (and so give themselves access).
#[test]
fn a_server_config_owned_by_another_user_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    private_file::write_atomic(&path, b"[server]\nknock_ports = [4000]\n").unwrap();
    assert!(config::load(&path).is_ok());
    give_to(&path, NOBODY);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let err = config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains(&format!("chown root {}", path.display())),
        "{err}"
    );
    assert!(err.contains("uid 65534"), "{err}");
    // Through the binary, as an admin would see it.
    let out = Command::new(capyknock_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("chown root"), "{}", text(&out));
    give_to(&path, 0);
    assert!(config::load(&path).is_ok());
}

#[test]
fn a_client_config_owned_by_another_user_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.toml");
    private_file::write_atomic(&path, b"").unwrap();
    assert!(capyknock::client::config::load(&path).is_ok());
    give_to(&path, NOBODY);
    let err = capyknock::client::config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("chown root {}", path.display())),
        "{err}"
    );
}

/// A config directory another user owns: they could replace the file.
#[test]
fn a_config_directory_owned_by_another_user_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("etc");
    std::fs::create_dir(&sub).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = sub.join("server.toml");
    private_file::write_atomic(&path, b"").unwrap();
    give_to(&sub, NOBODY);
    let err = config::load(&path).unwrap_err().to_string();
    assert!(
        err.contains(&format!("chown root {}", sub.display())),
        "{err}"
    );
    // keygen refuses to write there too.
    let out = Command::new(capyknock_bin())
        .args(["keygen", "--nickname", "alice", "--server", "h.example"])
        .args(["--ports", "22", "--no-qr", "--server-config"])
        .arg(&path)
        .arg("--client-config")
        .arg(dir.path().join("client.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("chown root"), "{}", text(&out));
    assert_eq!(std::fs::read(&path).unwrap(), b"");
}

#[test]
fn a_state_directory_owned_by_another_user_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    StateDir::open(&state).unwrap();
    give_to(&state, NOBODY);
    let err = private_file::ensure_dir(&state, "state", DirRule::OnlyUs)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("chown root {}", state.display())),
        "{err}"
    );
    assert!(StateDir::open(&state).is_err());
    give_to(&state, 0);
    assert!(StateDir::open(&state).is_ok());
}
