//! contrib/systemd/capyknock.service: `systemd-analyze verify` finds nothing to complain about
//! (with `ExecStart` pointing at the built binary), and `systemd-analyze security` rates its
//! hardening "OK" or better. Needs `systemd-analyze` (Debian package `systemd`) and `man`
//! (`man-db`: `verify` opens the unit's `Documentation=` page); no root.
//! Run: `cargo test -p capyknock-tests --test daemon_systemd`.

use std::{path::Path, process::Command};

fn unit_with_built_binary(tag: &str) -> (std::path::PathBuf, String) {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd/capyknock.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/capyknock server"));
    let bin = capyknock_tests::capyknock_bin();
    let text = text.replace("/usr/local/bin/capyknock", &bin.display().to_string());
    let dir = std::env::temp_dir().join(format!("ck-unit-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("capyknock.service");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

fn systemd_analyze(args: &[&str], unit: &Path) -> std::process::Output {
    systemd_analyze_cmd(args, unit)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze missing ({e}): `apt-get install systemd`"))
}

fn systemd_analyze_cmd(args: &[&str], unit: &Path) -> Command {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(args).arg(unit);
    cmd
}

#[test]
fn unit_verifies_clean() {
    let (unit, text) = unit_with_built_binary("verify");
    // `verify` runs `man` on the unit's `Documentation=man:...` pages: give it the pages the
    // built binary generates (as the .deb installs them), so a page the unit names but nothing
    // generates fails here.
    assert!(text.contains("Documentation=man:capyknock-server(1)"));
    let man_root = unit.parent().unwrap().join("man");
    let status = Command::new(capyknock_tests::capyknock_bin())
        .arg("manpages")
        .arg(man_root.join("man1"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "capyknock manpages failed");
    let out = systemd_analyze_cmd(&["verify"], &unit)
        .env("MANPATH", &man_root)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze missing ({e}): `apt-get install systemd`"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(unit.parent().unwrap());
}

#[test]
fn unit_is_hardened() {
    let (unit, text) = unit_with_built_binary("security");
    for line in [
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6 AF_PACKET",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_RAW CAP_CHOWN",
        "StateDirectory=capyknock",
        "RuntimeDirectory=capyknock",
    ] {
        assert!(text.lines().any(|l| l == line), "unit lacks {line:?}");
    }
    let out = systemd_analyze(&["security", "--offline=true", "--no-pager"], &unit);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let level = stdout
        .lines()
        .find_map(|l| l.split("exposure level for capyknock.service: ").nth(1))
        .unwrap_or_else(|| panic!("no exposure level in:\n{stdout}"));
    let score: f64 = level.split_whitespace().next().unwrap().parse().unwrap();
    assert!(score <= 3.0, "exposure {level}:\n{stdout}");
    let _ = std::fs::remove_dir_all(unit.parent().unwrap());
}
