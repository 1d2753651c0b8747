//! `cargo xtask dist`: the release artifacts in `target/dist/` (docs/PACKAGING.md):
//! - `capyknock_<v>_amd64.deb`: the server (cargo-deb; metadata in capyknock/Cargo.toml),
//! - `capyknock-client_<v>_amd64.deb`: the static client alone,
//! - `capyknock-client-<v>-x86_64-linux-musl.tar.gz`: the static client, man pages, completions,
//! - `capyknock-client-<v>-x86_64-windows.zip`: `capyknock.exe` (built with mingw),
//! - `SHA256SUMS`.
//!
//! `--check` then runs lintian on each `.deb` (no errors allowed) and installs each into a
//! throwaway root ([`install_check`]).

mod install_check;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{self, command, workspace_root},
    setup::{self, MUSL_TARGET, WINDOWS_TARGET},
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// After building, lint the packages and install each into a throwaway root (needs root).
    #[arg(long)]
    pub check: bool,
}

pub fn dist(opts: &Options) -> anyhow::Result<()> {
    setup::setup(&setup::Options {
        for_tests: false,
        for_dist: true,
    })?;
    let root = workspace_root();
    let out = root.join("target/dist");
    let gen_dir = out.join("gen");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(&gen_dir)?;
    let version = env!("CARGO_PKG_VERSION");
    check_changelog(
        &std::fs::read_to_string(root.join(CHANGELOG))
            .with_context(|| format!("reading {CHANGELOG}"))?,
        version,
    )?;

    // The server: full build, its docs, the unit with the packaged binary's path.
    cmd::run(&mut command(
        "cargo",
        &["build", "--locked", "--release", "-p", "capyknock"],
    ))?;
    generate_docs(
        &root.join("target/release/capyknock"),
        &gen_dir.join("server"),
    )?;
    packaged_unit(&root, &gen_dir.join("systemd"))?;
    let server_deb = cargo_deb(&out, &[])?;

    // The client: static, musl; the .deb, the tarball.
    let client_args = ["--variant", "client", "--target", MUSL_TARGET];
    cmd::run(&mut command(
        "cargo",
        &[
            "build",
            "--locked",
            "--release",
            "-p",
            "capyknock",
            "--no-default-features",
            "--features",
            "client",
            "--target",
            MUSL_TARGET,
        ],
    ))?;
    let musl_bin = root.join(format!("target/{MUSL_TARGET}/release/capyknock"));
    generate_docs(&musl_bin, &gen_dir.join("client"))?;
    let client_deb = cargo_deb(&out, &client_args)?;
    let tarball = client_tarball(&musl_bin, &gen_dir, &out, version)?;

    // Windows.
    cmd::run(&mut command(
        "cargo",
        &[
            "build",
            "--locked",
            "--release",
            "-p",
            "capyknock",
            "--no-default-features",
            "--features",
            "client",
            "--target",
            WINDOWS_TARGET,
        ],
    ))?;
    let zip = windows_zip(&root, &gen_dir, &out, version)?;

    let artifacts = [server_deb, client_deb, tarball, zip];
    sha256sums(&out, &artifacts)?;
    println!("dist: artifacts in {}", out.display());
    for a in &artifacts {
        let size = std::fs::metadata(a).map_or(0, |m| m.len());
        println!("  {:>10} bytes  {}", size, a.display());
    }
    if opts.check {
        check(&artifacts[0], &artifacts[1], &out)?;
    }
    Ok(())
}

/// The Debian changelog both packages ship (cargo-deb `changelog`).
const CHANGELOG: &str = "contrib/debian/changelog";
/// cargo-deb's default Debian revision: the packages are `<version>-1`.
const DEB_REVISION: &str = "1";

/// The changelog's top entry must name the version being packaged, so a version bump in
/// Cargo.toml without a changelog entry fails here instead of shipping a stale changelog.
fn check_changelog(text: &str, version: &str) -> anyhow::Result<()> {
    let expected = format!("capyknock ({version}-{DEB_REVISION}) ");
    let first = text.lines().next().unwrap_or_default();
    if !first.starts_with(&expected) {
        bail!(
            "{CHANGELOG}: the top entry is `{first}`, expected one starting `{expected}`: add an \
             entry for this version (dch -v {version}-{DEB_REVISION}, or by hand)"
        );
    }
    Ok(())
}

/// Man pages and completion scripts from `binary` (clap definitions) into `dir`.
fn generate_docs(binary: &Path, dir: &Path) -> anyhow::Result<()> {
    cmd::run(Command::new(binary).arg("manpages").arg(dir.join("man")))?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for (shell, file) in [
        ("bash", "capyknock.bash"),
        ("zsh", "_capyknock"),
        ("fish", "capyknock.fish"),
        ("powershell", "capyknock.ps1"),
    ] {
        let out = Command::new(binary)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("running {}", binary.display()))?;
        if !out.status.success() {
            bail!("{} completions {shell} failed", binary.display());
        }
        std::fs::write(completions.join(file), out.stdout)?;
    }
    Ok(())
}

/// contrib/systemd/capyknock.service with the packaged binary's path (/usr/bin).
fn packaged_unit(root: &Path, dir: &Path) -> anyhow::Result<()> {
    let unit = std::fs::read_to_string(root.join("contrib/systemd/capyknock.service"))?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("capyknock.service"),
        unit.replace("/usr/local/bin/capyknock", "/usr/bin/capyknock"),
    )?;
    Ok(())
}

/// Runs cargo-deb (without building: the binaries are built already) and returns the .deb.
fn cargo_deb(out: &Path, extra: &[&str]) -> anyhow::Result<PathBuf> {
    let mut deb = command(
        "cargo",
        &["deb", "--locked", "--no-build", "-p", "capyknock"],
    );
    deb.args(extra).arg("--output").arg(out);
    let stdout =
        cmd::output(&mut deb).with_context(|| format!("{} failed", cmd::describe(&deb)))?;
    let path = stdout
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .context("cargo deb printed no path")?;
    println!("dist: {}", path.display());
    Ok(path)
}

fn client_tarball(
    bin: &Path,
    gen_dir: &Path,
    out: &Path,
    version: &str,
) -> anyhow::Result<PathBuf> {
    let name = format!("capyknock-client-{version}-x86_64-linux-musl");
    let stage = gen_dir.join(&name);
    std::fs::create_dir_all(&stage)?;
    std::fs::copy(bin, stage.join("capyknock"))?;
    copy_dir(&gen_dir.join("client/man"), &stage.join("man"))?;
    copy_dir(
        &gen_dir.join("client/completions"),
        &stage.join("completions"),
    )?;
    std::fs::copy(workspace_root().join("README.md"), stage.join("README.md"))?;
    let tarball = out.join(format!("{name}.tar.gz"));
    cmd::run(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "-czf"])
            .arg(&tarball)
            .arg("-C")
            .arg(gen_dir)
            .arg(&name),
    )?;
    Ok(tarball)
}

fn windows_zip(root: &Path, gen_dir: &Path, out: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let name = format!("capyknock-client-{version}-x86_64-windows");
    let stage = gen_dir.join(&name);
    std::fs::create_dir_all(&stage)?;
    std::fs::copy(
        root.join(format!("target/{WINDOWS_TARGET}/release/capyknock.exe")),
        stage.join("capyknock.exe"),
    )?;
    std::fs::copy(
        gen_dir.join("client/completions/capyknock.ps1"),
        stage.join("capyknock.ps1"),
    )?;
    std::fs::copy(root.join("README.md"), stage.join("README.md"))?;
    let zip = out.join(format!("{name}.zip"));
    cmd::run(
        Command::new("zip")
            .args(["-q", "-r", "-X"])
            .arg(&zip)
            .arg(&name)
            .current_dir(gen_dir),
    )?;
    Ok(zip)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// `sha256sum` of the artifacts, by file name, into `SHA256SUMS`.
fn sha256sums(out: &Path, artifacts: &[PathBuf]) -> anyhow::Result<()> {
    let mut sum = Command::new("sha256sum");
    sum.current_dir(out);
    for a in artifacts {
        sum.arg(a.file_name().context("artifact without a name")?);
    }
    let text = cmd::output(&mut sum).context("sha256sum failed")?;
    std::fs::write(out.join("SHA256SUMS"), text)?;
    Ok(())
}

/// lintian (no errors), then the throwaway-root install of each package.
fn check(server_deb: &Path, client_deb: &Path, out: &Path) -> anyhow::Result<()> {
    for deb in [server_deb, client_deb] {
        println!("dist --check: lintian {}", deb.display());
        cmd::run(
            Command::new("lintian")
                .args(["--fail-on", "error", "--no-tag-display-limit"])
                .arg(deb),
        )?;
    }
    install_check::run(server_deb, "capyknock", true, &out.join("check-server"))?;
    install_check::run(
        client_deb,
        "capyknock-client",
        false,
        &out.join("check-client"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_top_entry_must_match_the_version() {
        let text = "capyknock (0.1.0-1) unstable; urgency=medium\n\n  * x\n";
        assert!(check_changelog(text, "0.1.0").is_ok());
        assert!(check_changelog(text, "0.2.0").is_err());
        assert!(check_changelog("", "0.1.0").is_err());
        assert!(check_changelog("capyknock (0.1.0-2) unstable;", "0.1.0").is_err());
    }

    #[test]
    fn shipped_changelog_matches_the_workspace_version() {
        let text = std::fs::read_to_string(workspace_root().join(CHANGELOG)).unwrap();
        check_changelog(&text, env!("CARGO_PKG_VERSION")).unwrap();
    }
}
