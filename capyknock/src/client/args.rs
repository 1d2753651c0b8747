//! Command-line arguments of `capyknock knock`, exactly as typed (clap). [`super::knock`] checks
//! them against the profile.

use std::{net::IpAddr, path::PathBuf};

/// Send a knock so the server opens your ports, then check that they answer.
///
/// Exit status: 0 the port answers (or the knock was sent, with --no-check); 1 an unexpected
/// error (sending, relaying); 2 a usage or configuration problem; 3 the server name did not
/// resolve; 4 the port stayed closed after the last attempt; 5 no code could be had (no
/// terminal and no --otp); 6 the knock opened the port but nothing listens on it.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Exit status:\n  \
    0  the port answers (or the knock was sent, with --no-check)\n  \
    1  an unexpected error (sending, no reachable address, relaying)\n  \
    2  a usage or configuration problem (flags, profile, client config, malformed code)\n  \
    3  the server name did not resolve\n  \
    4  the port stayed closed after the last attempt\n  \
    5  no code could be had (no terminal and no --otp/--otp-stdin)\n  \
    6  the knock opened the port (dropped before, refused after) but nothing listens on it")]
#[expect(
    clippy::struct_excessive_bools,
    reason = "clap flags: independent switches, not a state machine"
)]
pub struct KnockArgs {
    /// Profile name, or the server's host name or address as written in a profile (so ssh's
    /// `%h` works). Default: `default_profile`, or the only profile.
    pub profile: Option<String>,

    /// Client config file [default: ~/.config/capyknock/client.toml on Linux,
    /// %APPDATA%\capyknock\client.toml on Windows].
    #[arg(long, value_name = "PATH")]
    pub client_config: Option<PathBuf>,

    /// The 6-digit code (for scripts; visible to other local users in the process list, so
    /// prefer --otp-stdin).
    #[arg(long, value_name = "CODE", conflicts_with = "otp_stdin")]
    pub otp: Option<String>,

    /// Read the code from the first line of stdin.
    #[arg(long, conflicts_with = "proxy")]
    pub otp_stdin: bool,

    /// TCP port to check (and, with --proxy, to connect to); asked for too if the profile does
    /// not list it. Default: the profile's `check_port` or first TCP port.
    #[arg(long, short = 'p', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Do not check the port: send the knock and exit 0.
    #[arg(long)]
    pub no_check: bool,

    /// Ask the server to open for this address instead of the packet's source address (for
    /// clients behind NAT; the server's user entry must allow it).
    #[arg(long, value_name = "ADDR")]
    pub allow_ip: Option<IpAddr>,

    /// ssh `ProxyCommand` mode: knock if needed, then relay stdin/stdout to the port. In
    /// ~/.ssh/config: `ProxyCommand capyknock knock %h --port %p --proxy`.
    #[arg(long)]
    pub proxy: bool,

    /// Use IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Use IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Knock attempts before giving up (each prompted attempt asks for a new code).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub attempts: u32,

    /// Seconds to wait for the port to open after each knock.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub wait: u64,

    /// Also write the knock packet to this file (mode 0600), to test the server's replay
    /// protection: send the same bytes again and nothing must open.
    #[arg(long, value_name = "PATH")]
    pub save_packet: Option<PathBuf>,

    /// No progress lines (errors are still printed).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}
