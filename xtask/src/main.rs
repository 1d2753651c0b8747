//! capyknock's developer tasks, for what cargo cannot do alone: installing prerequisites, the
//! full (privileged) test run, starting the daemon as root, the demo and the load benchmark.
//!
//! One module per subcommand, each with an options struct and a function.

mod bench_xdp;
mod client_build;
mod cmd;
mod demo;
mod demo_fleet;
mod disk;
mod dist;
mod fuzz;
mod load;
mod run;
mod setup;
mod test;

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "capyknock developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, clap::Subcommand)]
enum Task {
    /// Install what building needs (apt packages, toolchains, bpf-linker); `--for-tests` and
    /// `--for-dist` add what the tests and `dist` need. Idempotent; starts no service.
    Setup(setup::Options),
    /// fmt, clippy, unit and property tests, Windows check, then the privileged tests (root).
    Test(test::Options),
    /// Build release and run `capyknock server ARGS` as root.
    Run(run::Options),
    /// The whole story in throwaway network namespaces (root): keygen, knock, replay, ban,
    /// status; `--fleet`: two servers sharing one-time knocks and bans through etcd.
    Demo(demo::Options),
    /// Flood benchmark of the knock path (root): junk at swept rates while users knock, XDP
    /// against pcap and udp capture; report in target/load/.
    Load(load::Options),
    /// What the XDP program costs (root): ns per frame class against an empty program, and
    /// pass-through TCP with and without it, alone and beside a junk flood.
    BenchXdp(bench_xdp::Options),
    /// Release artifacts in target/dist/: server and client .debs, static Linux client tarball,
    /// Windows zip, SHA256SUMS; `--check` lints and test-installs the .debs (root).
    Dist(dist::Options),
    /// The CI step proving the client builds the public way: `cargo install` of the client in a
    /// clean copy with bpf-linker and the nightly out of PATH, its ldd, `cargo check` for the
    /// other platforms.
    ClientBuild,
    /// Run every fuzz target (fuzz/) for N seconds; installs cargo-fuzz if missing.
    Fuzz(fuzz::FuzzOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(opts) => setup::setup(&opts),
        Task::Test(opts) => test::test(&opts),
        Task::Run(opts) => run::run(&opts),
        Task::Demo(opts) => demo::demo(&opts),
        Task::Load(opts) => load::run(&opts),
        Task::Fuzz(opts) => fuzz::run(&opts),
        Task::Dist(opts) => dist::dist(&opts),
        Task::ClientBuild => client_build::run().map(drop),
        Task::BenchXdp(opts) => bench_xdp::bench_xdp(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("Caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
