//! The `capyknock` binary: a thin command line over the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};

/// Single packet authorization: one encrypted UDP knock with a TOTP code opens the firewall.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Knock: open your ports on a server, checking before and after (ssh: --proxy).
    Knock(capyknock::client::KnockArgs),
    /// Print a shell completion script to stdout (bash, zsh, fish, powershell).
    Completions {
        /// The shell to complete for.
        shell: capyknock::cli_docs::Shell,
    },
    /// Write the man pages (capyknock(1) and one per subcommand) into a directory (packaging).
    #[command(hide = true)]
    Manpages {
        /// Directory to write the pages into (created if missing).
        dir: std::path::PathBuf,
    },
    #[cfg(feature = "server")]
    #[command(flatten)]
    Server(ServerCommand),
}

/// The subcommands only a build with the `server` feature has.
#[cfg(feature = "server")]
#[derive(Debug, clap::Subcommand)]
enum ServerCommand {
    /// Create a user: random id, key and TOTP secret in the server and client configs, and a QR
    /// code for the authenticator app.
    Keygen(capyknock::keygen::KeygenArgs),
    /// Firewall maintenance: `capyknock firewall remove` deletes everything capyknock created.
    Firewall(capyknock::firewall::cli::FirewallArgs),
    /// Run the daemon in the foreground (logs to stderr; systemd: contrib/systemd).
    Server(capyknock::server::cli::ServerArgs),
    /// Check a server configuration without starting anything.
    CheckConfig(capyknock::server::cli::CheckConfigArgs),
    /// Ban an address: its grants are revoked and its knocks refused (fail2ban's action).
    Ban(capyknock::server::cli::BanArgs),
    /// Lift a ban.
    Unban(capyknock::server::cli::UnbanArgs),
    /// Show the daemon's state: capture, firewall, counters, grants, bans.
    Status(capyknock::server::cli::StatusArgs),
    /// Make the daemon re-read its configuration (like SIGHUP, but reports the result).
    Reload(capyknock::server::cli::ReloadArgs),
    /// The Windows service: install, uninstall, start, stop (docs/WINDOWS.md).
    #[cfg(windows)]
    Service(capyknock::server::service::ServiceArgs),
    /// Print the XDP program's verdict counters after running it on a crafted frame (diagnostic;
    /// needs root). Proves the embedded eBPF object loads on this kernel.
    #[cfg(target_os = "linux")]
    XdpSelfTest,
    /// The privileged firewall helper the daemon starts itself (privilege separation; not for
    /// direct use: it talks to the daemon over its standard input).
    #[cfg(target_os = "linux")]
    #[command(hide = true, name = "firewall-helper")]
    FirewallHelper,
    /// What the XDP program costs per frame class, as JSON (diagnostic for `cargo xtask
    /// bench-xdp`; needs root).
    #[cfg(target_os = "linux")]
    #[command(hide = true)]
    XdpBench(capyknock::capture::xdp_bench::BenchArgs),
}

fn main() -> ExitCode {
    // The Windows service logs to a file, set up by `service run` itself.
    if !is_service_run() {
        capyknock::tracing_setup::init();
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            // `knock` (docs/CLIENT.md) and the server-side commands (docs/OPERATIONS.md) document
            // their exit statuses.
            if let Some(e) = err.downcast_ref::<capyknock::client::KnockError>() {
                return ExitCode::from(e.exit_code());
            }
            #[cfg(feature = "server")]
            if let Some(e) = err.downcast_ref::<capyknock::server::cli::CliError>() {
                return ExitCode::from(e.exit_code());
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether this is `capyknock service run` (Windows service entry point).
fn is_service_run() -> bool {
    let mut args = std::env::args_os().skip(1);
    cfg!(all(windows, feature = "server"))
        && args.next().is_some_and(|a| a == "service")
        && args.next().is_some_and(|a| a == "run")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Knock(args) => capyknock::client::knock(&args)
            .map(drop)
            .map_err(Into::into),
        Command::Completions { shell } => {
            capyknock::cli_docs::completions(Cli::command(), shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => {
            for file in capyknock::cli_docs::manpages(Cli::command(), &dir)? {
                println!("{}", dir.join(file).display());
            }
            Ok(())
        }
        #[cfg(feature = "server")]
        Command::Server(command) => run_server(command),
    }
}

#[cfg(feature = "server")]
fn run_server(command: ServerCommand) -> anyhow::Result<()> {
    use ServerCommand as Command;
    match command {
        Command::Keygen(args) => capyknock::keygen::run(&args).map(drop).map_err(Into::into),
        Command::Firewall(args) => capyknock::firewall::cli::run(&args).map_err(Into::into),
        Command::Server(args) => Ok(capyknock::server::cli::server(&args)?),
        Command::CheckConfig(args) => Ok(capyknock::server::cli::check_config(&args)?),
        Command::Ban(args) => Ok(capyknock::server::cli::ban(&args)?),
        Command::Unban(args) => Ok(capyknock::server::cli::unban(&args)?),
        Command::Status(args) => Ok(capyknock::server::cli::status(&args)?),
        Command::Reload(args) => Ok(capyknock::server::cli::reload(&args)?),
        #[cfg(windows)]
        Command::Service(args) => Ok(capyknock::server::service::run(&args)?),
        #[cfg(target_os = "linux")]
        Command::FirewallHelper => Ok(capyknock::server::privsep::helper::run()?),
        #[cfg(target_os = "linux")]
        Command::XdpSelfTest => {
            let mut filter = capyknock::capture::xdp::XdpFilter::load(&[])?;
            let action = filter.test_run(&[0u8; 64])?;
            let name = capyknock::capture::xdp::action_name(action);
            println!("XDP program loaded; a frame of zeros (not a knock) got {name}");
            Ok(())
        }
        #[cfg(target_os = "linux")]
        Command::XdpBench(args) => Ok(capyknock::capture::xdp_bench::run(&args)?),
    }
}
