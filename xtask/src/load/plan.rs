//! The settled plan of a benchmark: the options with their defaults (`--quick` or not) filled
//! in, the runs of each capture mode, and how many knocks and users they need.

use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use capyknock_testkit::flood::Rate;

use super::{CaptureMode, Options, flood::Junk, run::WARMUP};

/// The settled plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub duration: Duration,
    pub rates: Vec<Rate>,
    pub modes: Vec<CaptureMode>,
    pub singles: Vec<Junk>,
    pub legit_rate: u32,
    pub quick: bool,
    pub state_parent: Option<PathBuf>,
    /// `--fleet`: claim every knock in etcd.
    pub fleet: bool,
    /// `--realtime-priority`: the daemon's `realtime_priority`.
    pub realtime_priority: Option<u8>,
    /// `--xdp-mode`: the daemon's `xdp_mode`.
    pub xdp_mode: String,
}

impl Plan {
    pub fn new(opts: &Options) -> anyhow::Result<Self> {
        let quick = opts.quick;
        let duration = Duration::from_secs(opts.duration.unwrap_or(if quick { 3 } else { 8 }));
        let mut rates = if opts.rate.is_empty() {
            if quick {
                vec![Rate::Pps(20_000), Rate::Max]
            } else {
                [10_000, 30_000, 100_000, 300_000]
                    .map(Rate::Pps)
                    .into_iter()
                    .chain([Rate::Max])
                    .collect()
            }
        } else {
            opts.rate.clone()
        };
        rates.sort();
        rates.dedup();
        let singles: Vec<Junk> = if !opts.junk.is_empty() {
            opts.junk
                .iter()
                .copied()
                .filter(|j| *j != Junk::Mix)
                .collect()
        } else if quick {
            Vec::new()
        } else {
            vec![Junk::Random, Junk::Magic, Junk::BadTag, Junk::Replay]
        };
        let mut modes = opts.capture.clone();
        modes.dedup();
        if modes.is_empty() {
            bail!("--capture names no mode");
        }
        Ok(Self {
            duration,
            rates,
            modes,
            singles,
            legit_rate: opts.legit_rate,
            quick,
            fleet: opts.fleet,
            realtime_priority: opts.realtime_priority,
            xdp_mode: opts.xdp_mode.clone(),
            state_parent: opts.state_dir.clone(),
        })
    }

    /// The runs of one mode: idle, the mix sweep, the single profiles at max.
    pub fn runs(&self) -> Vec<Option<(Junk, Rate)>> {
        std::iter::once(None)
            .chain(self.rates.iter().map(|r| Some((Junk::Mix, *r))))
            .chain(self.singles.iter().map(|j| Some((*j, Rate::Max))))
            .collect()
    }

    /// Legit knocks per run.
    pub fn knocks_per_run(&self) -> usize {
        let secs = self.duration.saturating_sub(WARMUP).as_secs_f64();
        ((secs * f64::from(self.legit_rate)).floor() as usize).max(1)
    }

    /// Users to keygen: enough for a TOTP step of continuous knocking without waits, and at
    /// least one run's worth (its knocks and the captured one).
    pub fn users_needed(&self) -> usize {
        (self.legit_rate as usize * 30).clamp(self.knocks_per_run() + 1, 4000)
    }
}
