//! `capyknock firewall ...`: maintenance commands that act on the system firewall without a
//! running daemon.

use super::{Error, Removed, config::DEFAULT_TABLE, remove_installed};

/// Arguments of `capyknock firewall`.
#[derive(Debug, clap::Args)]
pub struct FirewallArgs {
    #[command(subcommand)]
    command: FirewallCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FirewallCommand {
    /// Remove everything capyknock created in the firewall (the nftables table `inet capyknock`
    /// on Linux, the rules named `capyknock ...` on Windows), grants and bans included. Stop the
    /// daemon first, or it restores them. Needs root / Administrator.
    Remove {
        /// nftables table name, if `[firewall] table` was changed.
        #[arg(long, default_value = DEFAULT_TABLE)]
        table: String,
    },
}

/// Runs `capyknock firewall ...`.
pub fn run(args: &FirewallArgs) -> Result<(), Error> {
    match &args.command {
        FirewallCommand::Remove { table } => {
            match remove_installed(table)? {
                Removed::Removed => println!("removed capyknock's firewall rules"),
                Removed::NothingThere => {
                    println!("no capyknock firewall rules found; nothing to remove");
                }
            }
            Ok(())
        }
    }
}
