//! Documentation generated from the clap definitions: man pages (`clap_mangen`: `capyknock(1)`
//! and one page per subcommand, `capyknock-knock(1)`, `capyknock-server(1)`, ...) and shell
//! completions (`clap_complete`). Generated rather than hand-written so they never drift from
//! `--help`. The `.deb` packages install both (docs/PACKAGING.md).

use std::{io, path::Path};

/// Shells `capyknock completions` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    /// bash (install in /usr/share/bash-completion/completions/capyknock).
    Bash,
    /// zsh (install as `_capyknock` in a directory of `$fpath`).
    Zsh,
    /// fish (install in ~/.config/fish/completions/capyknock.fish).
    Fish,
    /// PowerShell (source from `$PROFILE`).
    Powershell,
}

impl Shell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            Self::Bash => clap_complete::Shell::Bash,
            Self::Zsh => clap_complete::Shell::Zsh,
            Self::Fish => clap_complete::Shell::Fish,
            Self::Powershell => clap_complete::Shell::PowerShell,
        }
    }
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn io::Write) {
    let name = cmd.get_name().to_owned();
    clap_complete::generate(shell.generator(), &mut cmd, name, out);
}

/// Writes `capyknock.1` and `capyknock-<sub>.1` for every visible subcommand (not clap's
/// generated `help`) into `dir` (created if missing). Returns the file names written.
pub fn manpages(cmd: clap::Command, dir: &Path) -> io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    // clap's generated `help` subcommand only repeats the pages: no `capyknock-help(1)`.
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    let name = cmd.get_name().to_owned();
    write_page(&cmd, &name, dir, &mut written)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = format!("{name}-{}", sub.get_name());
        write_page(sub, &page, dir, &mut written)?;
    }
    Ok(written)
}

fn write_page(
    cmd: &clap::Command,
    page: &str,
    dir: &Path,
    written: &mut Vec<String>,
) -> io::Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(page)
        .render(&mut buf)?;
    let file = format!("{page}.1");
    std::fs::write(dir.join(&file), buf)?;
    written.push(file);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("capyknock")
            .about("test")
            .subcommand(clap::Command::new("knock").about("Knock"))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn manpages_one_per_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = manpages(sample(), dir.path()).unwrap();
        files.sort();
        assert_eq!(files, ["capyknock-knock.1", "capyknock.1"]);
        let page = std::fs::read_to_string(dir.path().join("capyknock-knock.1")).unwrap();
        assert!(page.contains(".TH capyknock-knock 1"), "{page}");
    }

    #[test]
    fn completions_name_the_subcommands() {
        let mut out = Vec::new();
        completions(sample(), Shell::Bash, &mut out);
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("knock"));
    }
}
