//! What the server side shows of a legit knock: the nftables element for its address appearing
//! ([`NftWatch`] runs `nft monitor` in the server namespace; late when the CPUs are saturated,
//! so the run takes the earlier of that and the first TCP connect) and the daemon's "knock
//! accepted" log line, whose timestamp is compared with the send time.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::Path,
    process::{Child, Stdio},
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use capyknock_testkit::{files::path_str, netns::NetNs};

/// `nft monitor new elements` in the server namespace: when each address's allow element
/// appeared. Stops on drop.
#[derive(Debug)]
pub struct NftWatch {
    child: Child,
    events: Arc<Mutex<HashMap<Ipv4Addr, Vec<Instant>>>>,
    thread: Option<JoinHandle<()>>,
}

impl NftWatch {
    /// Starts watching the namespace `ns`.
    pub fn start(ns: &NetNs) -> anyhow::Result<Self> {
        let mut child = ns
            .command("nft")
            .args(["monitor", "new", "elements"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nft monitor (is nftables installed?)")?;
        let stdout = child.stdout.take().context("nft monitor has no stdout")?;
        let events: Arc<Mutex<HashMap<Ipv4Addr, Vec<Instant>>>> = Arc::default();
        let sink = Arc::clone(&events);
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let at = Instant::now();
                let Ok(line) = line else { break };
                if let Some(addr) = element_addr(&line) {
                    sink.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(addr)
                        .or_default()
                        .push(at);
                }
            }
        });
        // Let it subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(200));
        Ok(Self {
            child,
            events,
            thread: Some(thread),
        })
    }

    /// When the element for `addr` first appeared at or after `since`.
    pub fn first_after(&self, addr: Ipv4Addr, since: Instant) -> Option<Instant> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&addr)?
            .iter()
            .copied()
            .filter(|t| *t >= since)
            .min()
    }
}

impl Drop for NftWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The IPv4 address of an `add element inet capyknock allow4 { 10.98.1.7 . tcp . 22 ... }`
/// line.
fn element_addr(line: &str) -> Option<Ipv4Addr> {
    if !line.contains("allow4") {
        return None;
    }
    let (_, inside) = line.split_once('{')?;
    inside.split_whitespace().next()?.parse().ok()
}

/// `(source address, log time)` of every "knock accepted" line in the daemon's log.
pub fn accepted_in_log(log: &Path) -> anyhow::Result<Vec<(Ipv4Addr, SystemTime)>> {
    let text = std::fs::read_to_string(log)
        .with_context(|| format!("reading {}", path_str(log).unwrap_or("the daemon log")))?;
    Ok(text.lines().filter_map(accepted_line).collect())
}

/// `2026-11-26T14:38:00.123456Z  INFO capyknock::knock: knock accepted nickname=u0001
/// src=10.98.1.7 addr=...`.
fn accepted_line(line: &str) -> Option<(Ipv4Addr, SystemTime)> {
    if !line.contains("knock accepted") {
        return None;
    }
    let time = humantime::parse_rfc3339(line.split_whitespace().next()?).ok()?;
    let src = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("src="))?
        .parse()
        .ok()?;
    Some((src, time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_monitor_lines() {
        let line =
            "add element inet capyknock allow4 { 10.98.1.7 . tcp . 22 timeout 3s expires 2s999ms }";
        assert_eq!(element_addr(line), Some(Ipv4Addr::new(10, 98, 1, 7)));
        assert_eq!(
            element_addr("add element inet capyknock ban4 { 10.98.1.7 timeout 1h }"),
            None
        );
        assert_eq!(element_addr("add element inet capyknock allow4 {"), None);
    }

    #[test]
    fn log_lines() {
        let line = "2026-11-26T14:38:00.250000Z  INFO capyknock::knock: knock accepted \
                    nickname=u0001 src=10.98.1.7 addr=10.98.1.7 ports=tcp/22 duration=3s";
        let (src, t) = accepted_line(line).unwrap();
        assert_eq!(src, Ipv4Addr::new(10, 98, 1, 7));
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((secs - 1_795_703_880.25).abs() < 1e-3, "{secs}");
        assert!(accepted_line("2026-11-26T14:38:00Z WARN knock rejected src=1.2.3.4").is_none());
    }
}
