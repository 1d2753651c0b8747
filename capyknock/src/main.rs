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
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(target_os = "linux")]
        Command::XdpSelfTest => {
            let mut filter = capyknock::capture::xdp::XdpFilter::load(&[])?;
            let action = filter.test_run(&[0u8; 64])?;
            println!("XDP program loaded; a zero frame got action {action}");
            Ok(())
        }
    }
}
