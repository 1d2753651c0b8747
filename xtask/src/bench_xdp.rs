//! `cargo xtask bench-xdp`: what the XDP program costs everything else (issue 17).
//!
//! Two parts, both reported as Markdown (stdout and `target/bench-xdp/<UTC time>/report.md`,
//! with the raw figures in `results.json`):
//!
//! - **Cost per frame class**: `capyknock xdp-bench cost` (a hidden diagnostic of the binary,
//!   which embeds the eBPF object; xtask cannot link it because xtask builds before the eBPF
//!   toolchain exists) runs each class through the program with `BPF_PROG_TEST_RUN` and a
//!   repeat count, and through the empty program of the same object (the floor), timed by the
//!   kernel's test-run clock and by the kernel's BPF run-time statistics.
//! - **Pass-through traffic** ([`traffic`]): a TCP bulk transfer and a TCP request/response
//!   test through a veth pair in two throwaway network namespaces, with no XDP program, the
//!   empty one and capyknock's attached to the server's end (`capyknock xdp-bench hold`), alone
//!   and beside a bounded junk flood to the knock port.
//!
//! Nothing is asserted about speed: `--quick` (the CI smoke test) fails only when the tool
//! itself breaks (a class getting the wrong verdict, a namespace that cannot be made).

mod traffic;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cmd::{self, command, is_root, workspace_root};

/// Prefix of the namespaces this task creates (`<prefix><pid>-c`, `-s`).
const NS_PREFIX: &str = "ckbx";

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Short runs (a CI smoke test of the tool: figures reported, nothing judged).
    #[arg(long)]
    pub quick: bool,
    /// Runs per `BPF_PROG_TEST_RUN` call (default 1,000,000; --quick 20,000).
    #[arg(long)]
    pub repeat: Option<u32>,
    /// Test-run calls per class and program; the median is reported (default 7; --quick 3).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Seconds per traffic test (default 5; --quick 1).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Junk packets per second in the flood runs (paced; the sender may fall short).
    #[arg(long, default_value_t = 100_000)]
    pub flood_rate: u64,
    /// Times the traffic tests' three programs take turns; each figure is the median over
    /// the rounds (default 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub traffic_rounds: u32,
    /// Attach mode for the traffic tests: `tc` (the programs at tc ingress: what the daemon's
    /// `xdp_mode = "auto"` takes on the benchmark's veth), `native` (driver XDP) or `skb`
    /// (generic XDP).
    #[arg(long, default_value = "tc", value_parser = ["tc", "native", "skb"])]
    pub xdp_mode: String,
    /// Run only one part: `cost` (per frame class) or `traffic` (pass-through TCP).
    #[arg(long, value_enum)]
    pub only: Option<Part>,
    /// Benchmark this capyknock binary instead of building one (e.g. an older build, to
    /// compare).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Use the debug build (the eBPF object is always optimised; only the driver differs).
    #[arg(long)]
    pub debug: bool,
    /// Do not build; use the binary that is there.
    #[arg(long)]
    pub no_build: bool,
    /// Where the report goes (default target/bench-xdp/<UTC time>/).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The two parts of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Cost per frame class.
    Cost,
    /// Pass-through traffic.
    Traffic,
}

impl Options {
    /// The CI smoke test: `--quick` on the debug build.
    pub fn ci_smoke() -> Self {
        Self {
            quick: true,
            repeat: None,
            rounds: None,
            traffic_rounds: 1,
            seconds: None,
            flood_rate: 100_000,
            only: None,
            xdp_mode: "tc".to_owned(),
            bin: None,
            debug: true,
            no_build: false,
            out: None,
        }
    }
}

pub fn bench_xdp(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "bench-xdp loads BPF programs and makes network namespaces: run `sudo -E env \
             PATH=\"$PATH\" cargo xtask bench-xdp`"
        );
    }
    // The test tools (tcpdump, nftables, ...) come with `setup --for-tests`; a no-op when present.
    crate::setup::setup(&crate::setup::Options::tests())?;
    capyknock_testkit::wait::install_signal_handlers()?;
    capyknock_testkit::netns::remove_stale(NS_PREFIX, "capyknock-bench-xdp-");
    let bin = binary(opts)?;
    let out_dir = opts.out.clone().unwrap_or_else(|| {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(':', "-");
        workspace_root().join("target/bench-xdp").join(stamp)
    });
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;

    let mut report = String::new();
    let _ = writeln!(report, "# cargo xtask bench-xdp\n");
    let _ = writeln!(report, "{}\n", machine_line());
    let mut results = serde_json::Map::new();

    if opts.only != Some(Part::Traffic) {
        let (repeat, rounds) = if opts.quick {
            (opts.repeat.unwrap_or(20_000), opts.rounds.unwrap_or(3))
        } else {
            (opts.repeat.unwrap_or(1_000_000), opts.rounds.unwrap_or(7))
        };
        let valid = if opts.quick { 300 } else { 7000 };
        println!("bench-xdp: cost per frame class ({rounds} x {repeat} runs each)...");
        let load_before = load_average();
        let cost = run_cost(&bin, repeat, rounds, valid)?;
        let load_after = load_average();
        let _ = writeln!(
            report,
            "## Cost per frame class\n\nBPF_PROG_TEST_RUN, {rounds} calls of {repeat} runs per \
             class (valid knocks: {valid} distinct knocks, one run each); median of the calls. \
             Load average {load_before} before, {load_after} after.\n"
        );
        report.push_str("XDP program (`capyknock`) against the empty XDP program:\n\n");
        report.push_str(&cost_table(&cost, "xdp"));
        if cost_has(&cost, "tc") {
            report.push_str(
                "\nThe same pre-filter at tc ingress (`capyknock_tc`, what `xdp_mode = \"auto\"` \
                 attaches to a veth) against the empty tc program:\n\n",
            );
            report.push_str(&cost_table(&cost, "tc"));
        }
        results.insert("cost".to_owned(), cost);
    }
    if opts.only != Some(Part::Cost) {
        let seconds = opts.seconds.unwrap_or(if opts.quick { 1 } else { 5 });
        println!("bench-xdp: pass-through traffic ({seconds} s per test)...");
        let load_before = load_average();
        let traffic = traffic::run(&traffic::Plan {
            bin: bin.clone(),
            ns_prefix: format!("{NS_PREFIX}{}", std::process::id()),
            seconds,
            flood_rate: opts.flood_rate,
            xdp_mode: opts.xdp_mode.clone(),
            rounds: opts.traffic_rounds,
        })?;
        let load_after = load_average();
        let _ = writeln!(
            report,
            "\n## Pass-through traffic\n\nveth between two namespaces, the program attached \
             ({} mode) to the server's end; {seconds} s per test, {} round(s), flood {} junk \
             packets/s offered (bad tags for a known user: the dearest rejection). Load average \
             {load_before} before, {load_after} after.\n",
            opts.xdp_mode, opts.traffic_rounds, opts.flood_rate
        );
        report.push_str(&traffic::table(&traffic));
        results.insert("traffic".to_owned(), traffic);
    }

    println!("\n{report}");
    std::fs::write(out_dir.join("report.md"), &report).context("writing report.md")?;
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&Value::Object(results))?,
    )
    .context("writing results.json")?;
    println!("bench-xdp: report in {}", out_dir.display());
    Ok(())
}

/// Builds capyknock (unless told not to) and returns the binary to drive.
fn binary(opts: &Options) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &opts.bin {
        return Ok(bin.clone());
    }
    let profile = if opts.debug { "debug" } else { "release" };
    if !opts.no_build {
        let mut args = vec!["build", "-p", "capyknock"];
        if !opts.debug {
            args.push("--release");
        }
        cmd::run(&mut command("cargo", &args))?;
    }
    let bin = workspace_root()
        .join("target")
        .join(profile)
        .join("capyknock");
    if !bin.exists() {
        bail!("{} missing: build it, or drop --no-build", bin.display());
    }
    Ok(bin)
}

fn run_cost(bin: &Path, repeat: u32, rounds: u32, valid: u32) -> anyhow::Result<Value> {
    let out = capture(Command::new(bin).args([
        "xdp-bench",
        "cost",
        "--repeat",
        &repeat.to_string(),
        "--rounds",
        &rounds.to_string(),
        "--valid",
        &valid.to_string(),
    ]))?;
    // The JSON is the last line; logging may precede it.
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("capyknock xdp-bench cost printed no JSON")?;
    serde_json::from_str(line).context("parsing the output of capyknock xdp-bench cost")
}

/// The budgets of issue 17 item 2, in ns over the empty program, by class.
fn budget(class: &str) -> Option<f64> {
    match class {
        "tcp_other_port" | "tcp6_other_port" | "udp_other_port" => Some(15.0),
        "wrong_size" | "bad_magic" => Some(40.0),
        "bad_tag" => Some(150.0),
        _ => None,
    }
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// Whether the classes of `cost` carry figures for `hook` (`xdp`, `tc`); builds before
/// 2026-12-07 report only the XDP program's, without that key.
fn cost_has(cost: &Value, hook: &str) -> bool {
    classes(cost).any(|c| c.get(hook).is_some())
}

fn classes(cost: &Value) -> impl Iterator<Item = &Value> {
    cost.get("classes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// The per-class table of `hook`'s program (`xdp` or `tc`) against its empty program.
fn cost_table(cost: &Value, hook: &str) -> String {
    let mut t = String::from(
        "| class | verdict | program ns | empty ns | over empty | over empty (fastest calls) \
         | stats: program | stats: empty | stats: over empty | budget (over empty) |\n| --- | --- \
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    let f = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.0}"));
    for class in classes(cost) {
        let name = class.get("class").and_then(Value::as_str).unwrap_or("?");
        let what = class.get("what").and_then(Value::as_str).unwrap_or(name);
        let verdict = class.get("verdict").and_then(Value::as_str).unwrap_or("?");
        // Older builds' XDP figures sit on the class itself.
        let figures = class.get(hook).unwrap_or(class);
        let p = num(figures, &["program", "test_run_ns"]);
        let e = num(figures, &["floor", "test_run_ns"]);
        let ps = num(figures, &["program", "stats_ns"]);
        let es = num(figures, &["floor", "stats_ns"]);
        let over = p.zip(e).map(|(p, e)| p - e);
        let over_min = num(figures, &["program", "test_run_min_ns"])
            .zip(num(figures, &["floor", "test_run_min_ns"]))
            .map(|(p, e)| p - e);
        let over_stats = ps.zip(es).map(|(p, e)| p - e);
        let judged = budget(name).map_or_else(
            || "-".to_owned(),
            |b| {
                let met = over.is_some_and(|o| o <= b);
                format!("{b:.0} ({})", if met { "met" } else { "not met" })
            },
        );
        let _ = writeln!(
            t,
            "| {what} | `{verdict}` | {} | {} | {} | {} | {} | {} | {} | {judged} |",
            f(p),
            f(e),
            f(over),
            f(over_min),
            f(ps),
            f(es),
            f(over_stats),
        );
    }
    t
}

/// `uname -r` and the CPU model, for the report.
fn machine_line() -> String {
    let kernel = cmd::output(Command::new("uname").arg("-r")).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("Kernel {}, {cpus} CPUs ({cpu}).", kernel.trim())
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Runs `cmd`; its stdout and stderr together, or an error with them.
pub(crate) fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = capyknock_testkit::process::run(cmd)?;
    Ok(capyknock_testkit::process::output_text(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_table_judges_the_budget() {
        let cost: Value = serde_json::json!({"classes": [
            {"class": "tcp_other_port", "what": "tcp", "verdict": "not_knock",
             "program": {"test_run_ns": 40.0, "test_run_min_ns": 38.0, "stats_ns": 70.0},
             "floor": {"test_run_ns": 30.0, "test_run_min_ns": 29.0, "stats_ns": 55.0}},
            {"class": "bad_tag", "what": "bad tag", "verdict": "bad_tag",
             "program": {"test_run_ns": 300.0, "stats_ns": null},
             "floor": {"test_run_ns": 30.0, "stats_ns": 55.0}},
        ]});
        let t = cost_table(&cost, "xdp");
        assert!(
            t.contains("| tcp | `not_knock` | 40 | 30 | 10 | 9 | 70 | 55 | 15 | 15 (met) |"),
            "{t}"
        );
        assert!(
            t.contains("| bad tag | `bad_tag` | 300 | 30 | 270 | - | - | 55 | - | 150 (not met) |"),
            "{t}"
        );
        assert!(!cost_has(&cost, "tc"));
    }

    #[test]
    fn cost_table_per_hook() {
        let figures = |p: f64| {
            let floor = serde_json::json!({"test_run_ns": 30.0});
            serde_json::json!({"program": {"test_run_ns": p}, "floor": floor})
        };
        let cost: Value = serde_json::json!({"classes": [
            {"class": "bad_tag", "what": "bad tag", "verdict": "bad_tag",
             "xdp": figures(120.0), "tc": figures(200.0)},
        ]});
        assert!(cost_has(&cost, "tc"));
        let xdp = cost_table(&cost, "xdp");
        let tc = cost_table(&cost, "tc");
        assert!(
            xdp.contains("| bad tag | `bad_tag` | 120 | 30 | 90 |"),
            "{xdp}"
        );
        assert!(
            tc.contains("| bad tag | `bad_tag` | 200 | 30 | 170 |"),
            "{tc}"
        );
    }
}
