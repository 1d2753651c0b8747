//! `cargo xtask run -- ARGS`: builds release and runs `capyknock server ARGS` as root, the way an
//! admin tries the daemon before installing the service.

use anyhow::bail;

use crate::{
    cmd::{self, command, is_root},
    setup,
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Arguments for `capyknock server`, e.g. `-- --config /etc/capyknock/server.toml`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the daemon needs root (XDP, nftables): run `sudo -E env PATH=\"$PATH\" cargo xtask run -- ARGS`"
        );
    }
    setup::setup(&setup::Options::default())?;
    cmd::run(&mut command(
        "cargo",
        &["build", "--release", "-p", "capyknock"],
    ))?;
    let bin = capyknock_testkit::files::capyknock_binary("release");
    let mut server = std::process::Command::new(bin);
    server.arg("server").args(&opts.args);
    cmd::run(&mut server)
}
