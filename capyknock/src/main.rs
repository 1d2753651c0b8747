//! The `capyknock` binary: a thin command line over the library.

use std::process::ExitCode;

use clap::Parser;

/// Single packet authorization: one encrypted UDP knock with a TOTP code opens the firewall.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create a user: random id, key and TOTP secret in the server and client configs, and a QR
    /// code for the authenticator app.
    Keygen(capyknock::keygen::KeygenArgs),
    /// Knock: open your ports on a server, checking before and after (ssh: --proxy).
    Knock(capyknock::client::KnockArgs),
    /// Print the XDP program's verdict counters after running it on a crafted frame (diagnostic;
    /// needs root). Proves the embedded eBPF object loads on this kernel.
    #[cfg(target_os = "linux")]
    XdpSelfTest,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            // `knock` documents its exit statuses (`capyknock knock --help`).
            err.downcast_ref::<capyknock::client::KnockError>()
                .map_or(ExitCode::FAILURE, |e| ExitCode::from(e.exit_code()))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen(args) => capyknock::keygen::run(&args).map(drop).map_err(Into::into),
        Command::Knock(args) => capyknock::client::knock(&args)
            .map(drop)
            .map_err(Into::into),
        #[cfg(target_os = "linux")]
        Command::XdpSelfTest => {
            let mut filter = capyknock::capture::xdp::XdpFilter::load(&[])?;
            let action = filter.test_run(&[0u8; 64])?;
            println!("XDP program loaded; a zero frame got action {action}");
            Ok(())
        }
    }
}
