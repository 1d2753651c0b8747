//! The legitimate users: many keygen'd machine profiles (`--totp-mode derived`), their knock
//! packets made by the real client, sent from fresh client addresses during a run, and the time
//! each took to open the firewall.
//!
//! The protocol accepts each (user, TOTP step) once and grants per source address, so every
//! legit knock uses a user that has not knocked in the current 30 s step ([`Users`]) and an
//! address that holds no grant (a pool of client addresses used round-robin, each reused only
//! after its short grant ran out).
//!
//! Packets are made before a run starts, so no process starts during the measurement: `capyknock
//! knock PROFILE --no-check --save-packet FILE` runs in a sink namespace whose route to the
//! server's address leads nowhere (the saved bytes are what it would have sent; the packet does
//! not name its source address, so it can be sent from any). During the run each knock is sent
//! from its own client address as the client does (three copies, 50 ms apart), and timed three
//! ways from the first copy:
//!
//! - `tcp`: the first successful TCP connect to the service from that address (a fresh
//!   non-blocking socket every millisecond, each given up to 100 ms);
//! - `firewall`: the nftables element for that address appearing ([`NftWatch`] runs `nft
//!   monitor`; the run takes the earlier of that and the TCP connect, since `nft` itself may be
//!   scheduled late on busy CPUs and a connect cannot succeed before the element is there);
//! - `daemon`: the daemon's "knock accepted" log line (its timestamp against the send time).

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::File,
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::topology::{NetNs, capture, check_interrupted, enter, path_str, write_private};

/// TOTP step length (RFC 6238 default, the protocol's).
pub const STEP_SECS: u64 = 30;
/// How long a knock may take to open before it counts as not honoured.
pub const KNOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Copies of each knock and the pause between them (what `capyknock knock` does).
pub const COPIES: usize = 3;
const SPACING: Duration = Duration::from_millis(50);
/// A new TCP attempt this often, each kept this long.
const ATTEMPT_EVERY: Duration = Duration::from_millis(1);
const ATTEMPT_LIFETIME: Duration = Duration::from_millis(100);
/// Knock processes run at once while making packets.
const GENERATE_PARALLEL: usize = 16;
/// Parallel keygen chains (each on its own pair of files, merged afterwards).
const KEYGEN_SHARDS: usize = 4;

/// The current TOTP step.
pub fn current_step() -> u64 {
    unix_now() / STEP_SECS
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The users, and the step each last knocked in.
#[derive(Debug)]
pub struct Users {
    /// Profile names.
    profiles: Vec<String>,
    /// Step each one last knocked in.
    last_step: Vec<Option<u64>>,
}

/// What [`Users::create`] needs.
#[derive(Debug)]
pub struct UserSetup<'a> {
    /// The capyknock binary.
    pub bin: &'a Path,
    /// Folder for the shard files.
    pub dir: &'a Path,
    /// The server config's text before any user (a complete `[server]` config).
    pub server_header: &'a str,
    /// Where the merged server config goes.
    pub server_config: &'a Path,
    /// Where the merged client config goes.
    pub client_config: &'a Path,
    /// The address in the profiles.
    pub server_addr: Ipv4Addr,
    /// The service port users may open.
    pub service_port: u16,
    /// Access duration of each grant.
    pub access: &'a str,
    /// Number of legit users.
    pub count: usize,
}

impl Users {
    /// Runs `capyknock keygen` for `count` users, in parallel chains
    /// of files merged at the end (keygen appends whole `[[user]]` / `[profile.NAME]` tables
    /// after what is there, so the merge is a concatenation).
    pub fn create(s: &UserSetup<'_>) -> anyhow::Result<Self> {
        const CLIENT_HEADER: &str = "# capyknock load benchmark: machine profiles\n";
        let names: Vec<String> = (1..=s.count).map(|i| format!("u{i:04}")).collect();
        let mut chains: Vec<Vec<String>> = vec![Vec::new(); KEYGEN_SHARDS];
        for (i, n) in names.iter().enumerate() {
            if let Some(c) = chains.get_mut(i % KEYGEN_SHARDS) {
                c.push(n.clone());
            }
        }
        let mut threads = Vec::new();
        for (i, chain) in chains.into_iter().enumerate() {
            let server = s.dir.join(format!("keygen-{i}-server.toml"));
            let client = s.dir.join(format!("keygen-{i}-client.toml"));
            write_private(&server, s.server_header.as_bytes())?;
            write_private(&client, CLIENT_HEADER.as_bytes())?;
            let bin = s.bin.to_owned();
            let (addr, port, access) = (s.server_addr, s.service_port, s.access.to_owned());
            threads.push(std::thread::spawn(move || -> anyhow::Result<_> {
                for name in &chain {
                    check_interrupted()?;
                    capture(
                        Command::new(&bin)
                            .args(["keygen", "--nickname", name, "--profile", name])
                            .args(["--server", &addr.to_string(), "--ports", &port.to_string()])
                            .args(["--totp-mode", "derived", "--access", &access, "--no-qr"])
                            .arg("--server-config")
                            .arg(&server)
                            .arg("--client-config")
                            .arg(&client)
                            .stdin(Stdio::null()),
                    )?;
                }
                Ok((server, client))
            }));
        }
        let mut server_text = s.server_header.to_owned();
        let mut client_text = CLIENT_HEADER.to_owned();
        for t in threads {
            let (server, client) = t
                .join()
                .map_err(|_| anyhow::anyhow!("keygen thread panicked"))??;
            let one = std::fs::read_to_string(&server)?;
            server_text.push_str(
                one.strip_prefix(s.server_header)
                    .context("keygen rewrote the start of the server config")?,
            );
            let one = std::fs::read_to_string(&client)?;
            client_text.push_str(
                one.strip_prefix(CLIENT_HEADER)
                    .context("keygen rewrote the start of the client config")?,
            );
            let _ = std::fs::remove_file(server);
            let _ = std::fs::remove_file(client);
        }
        write_private(s.server_config, server_text.as_bytes())?;
        write_private(s.client_config, client_text.as_bytes())?;
        Ok(Self {
            last_step: vec![None; names.len()],
            profiles: names,
        })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// `n` users that have not knocked in the current step, marked as knocking in it; waits for
    /// the next step when too few are left.
    pub fn take(&mut self, n: usize) -> anyhow::Result<Vec<String>> {
        if n > self.profiles.len() {
            bail!(
                "{n} knocks in one run need {n} users, there are {}",
                self.profiles.len()
            );
        }
        loop {
            let step = current_step();
            let free: Vec<usize> = (0..self.profiles.len())
                .filter(|&i| self.last_step.get(i).copied().flatten() != Some(step))
                .take(n)
                .collect();
            if free.len() == n {
                let mut out = Vec::with_capacity(n);
                for i in free {
                    if let (Some(s), Some(p)) = (self.last_step.get_mut(i), self.profiles.get(i)) {
                        *s = Some(step);
                        out.push(p.clone());
                    }
                }
                return Ok(out);
            }
            let wait = STEP_SECS - unix_now() % STEP_SECS;
            println!(
                "    (every user knocked in this TOTP step: waiting {wait} s for the next one)"
            );
            crate::topology::sleep(Duration::from_millis(wait * 1000 + 300))?;
        }
    }
}

/// Makes one knock packet per profile with the real client in the sink namespace `sink`.
pub fn generate(
    bin: &Path,
    sink: &NetNs,
    client_config: &Path,
    dir: &Path,
    profiles: &[String],
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(profiles.len());
    let mut running: std::collections::VecDeque<(PathBuf, Child, String)> =
        std::collections::VecDeque::new();
    let finish = |(file, mut child, profile): (PathBuf, Child, String)| -> anyhow::Result<Vec<u8>> {
        let status = child.wait().context("waiting for capyknock knock")?;
        if !status.success() {
            bail!("capyknock knock {profile} --no-check --save-packet failed ({status})");
        }
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let _ = std::fs::remove_file(&file);
        Ok(bytes)
    };
    for (i, profile) in profiles.iter().enumerate() {
        check_interrupted()?;
        if running.len() >= GENERATE_PARALLEL
            && let Some(r) = running.pop_front()
        {
            out.push(finish(r)?);
        }
        let file = dir.join(format!("knock-{i}.bin"));
        let _ = std::fs::remove_file(&file);
        let child = sink
            .command(bin)
            .args(["knock", profile, "--no-check", "-q", "--client-config"])
            .arg(client_config)
            .arg("--save-packet")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start capyknock knock")?;
        running.push_back((file, child, profile.clone()));
    }
    while let Some(r) = running.pop_front() {
        out.push(finish(r)?);
    }
    Ok(out)
}

/// Client addresses, handed out round-robin.
#[derive(Debug)]
pub struct Addresses {
    all: Vec<Ipv4Addr>,
    next: usize,
}

impl Addresses {
    /// `count` addresses `10.B.x.y` (x from 1, y 1 to 250) added to `ifname` in `ns` as /16.
    pub fn add(ns: &NetNs, ifname: &str, b: u8, count: usize) -> anyhow::Result<Self> {
        let all: Vec<Ipv4Addr> = (0..count)
            .map(|i| {
                let x = u8::try_from(1 + i / 250).unwrap_or(u8::MAX);
                let y = u8::try_from(1 + i % 250).unwrap_or(u8::MAX);
                Ipv4Addr::new(10, b, x, y)
            })
            .collect();
        let mut lines = String::new();
        for a in &all {
            let _ = writeln!(lines, "addr add {a}/16 dev {ifname}");
        }
        ns.ip_batch(&lines)?;
        Ok(Self { all, next: 0 })
    }

    /// Every address.
    pub fn all(&self) -> &[Ipv4Addr] {
        &self.all
    }

    /// The next address.
    pub fn next(&mut self) -> Ipv4Addr {
        let a = self
            .all
            .get(self.next)
            .copied()
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        self.next = (self.next + 1) % self.all.len().max(1);
        a
    }
}

/// One legit knock's outcome.
#[derive(Debug, Clone)]
pub struct KnockResult {
    /// The client address it came from.
    pub src: Ipv4Addr,
    /// When the first copy left.
    pub sent_at: Instant,
    /// The same moment on the wall clock (to compare with the daemon's log).
    pub sent_wall: SystemTime,
    /// Time to the first successful TCP connect, if within [`KNOCK_TIMEOUT`].
    pub tcp: Option<Duration>,
    /// Something went wrong beyond "the port stayed closed".
    pub error: Option<String>,
}

/// Where legit knocks go.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The server's knock port on the client side.
    pub knock: SocketAddrV4,
    /// The protected service.
    pub service: SocketAddrV4,
}

/// Sends `knocks` (address, packet) from the client namespace, one every `interval`, and
/// returns each one's outcome once all are settled.
pub fn run_knocks(
    client: &NetNs,
    target: Target,
    knocks: Vec<(Ipv4Addr, Vec<u8>)>,
    interval: Duration,
) -> anyhow::Result<Vec<KnockResult>> {
    let ns = Arc::new(client.file()?);
    let start = Instant::now();
    let mut threads: Vec<JoinHandle<KnockResult>> = Vec::new();
    for (i, (src, packet)) in knocks.into_iter().enumerate() {
        let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if crate::topology::interrupted() {
            break;
        }
        let ns = Arc::clone(&ns);
        threads.push(std::thread::spawn(move || {
            knock_one(&ns, src, &packet, target)
        }));
    }
    let mut out = Vec::new();
    for t in threads {
        out.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("knock thread panicked"))?,
        );
    }
    check_interrupted()?;
    Ok(out)
}

/// Sends one knock from `src` and probes the service until it answers or the timeout.
fn knock_one(ns: &File, src: Ipv4Addr, packet: &[u8], target: Target) -> KnockResult {
    let mut result = KnockResult {
        src,
        sent_at: Instant::now(),
        sent_wall: SystemTime::now(),
        tcp: None,
        error: None,
    };
    let socket = enter(ns).and_then(|()| Ok(UdpSocket::bind((src, 0))?));
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            result.error = Some(format!("knock socket: {e}"));
            return result;
        }
    };
    result.sent_wall = SystemTime::now();
    result.sent_at = Instant::now();
    if let Err(e) = socket.send_to(packet, target.knock) {
        result.error = Some(format!("knock send: {e}"));
        return result;
    }
    let mut copies_left = COPIES - 1;
    let mut next_copy = result.sent_at + SPACING;
    let deadline = result.sent_at + KNOCK_TIMEOUT;
    let mut prober = Prober::new(src, target.service);
    loop {
        let now = Instant::now();
        if copies_left > 0 && now >= next_copy {
            let _ = socket.send_to(packet, target.knock);
            copies_left -= 1;
            next_copy += SPACING;
        }
        if now >= deadline {
            break;
        }
        match prober.step(now) {
            Ok(Some(at)) => {
                result.tcp = Some(at.saturating_duration_since(result.sent_at));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                result.error = Some(e);
                break;
            }
        }
    }
    // Let the remaining copies go out as the client would (they are duplicates by now).
    while copies_left > 0 {
        let now = Instant::now();
        if next_copy > now {
            std::thread::sleep(next_copy - now);
        }
        let _ = socket.send_to(packet, target.knock);
        copies_left -= 1;
        next_copy += SPACING;
    }
    result
}

/// Overlapping non-blocking TCP connects from one source address.
struct Prober {
    src: Ipv4Addr,
    dst: SocketAddrV4,
    attempts: Vec<(OwnedFd, Instant)>,
    next_attempt: Instant,
}

impl Prober {
    fn new(src: Ipv4Addr, dst: SocketAddrV4) -> Self {
        Self {
            src,
            dst,
            attempts: Vec::new(),
            next_attempt: Instant::now(),
        }
    }

    /// Starts an attempt if one is due, waits up to the next one for any to connect; the time
    /// one connected, if one did.
    fn step(&mut self, now: Instant) -> Result<Option<Instant>, String> {
        if now >= self.next_attempt {
            self.attempts
                .push((connect_nonblocking(self.src, self.dst)?, now));
            self.next_attempt = now + ATTEMPT_EVERY;
        }
        self.attempts
            .retain(|(_, started)| now.saturating_duration_since(*started) < ATTEMPT_LIFETIME);
        let mut fds: Vec<libc::pollfd> = self
            .attempts
            .iter()
            .map(|(fd, _)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let wait = self.next_attempt.saturating_duration_since(Instant::now());
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::c_long::try_from(wait.as_nanos()).unwrap_or(1_000_000),
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call; a null
        // signal mask keeps ours.
        let rc = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &raw const ts,
                std::ptr::null(),
            )
        };
        if rc <= 0 {
            return Ok(None);
        }
        let at = Instant::now();
        let mut failed = Vec::new();
        for (i, p) in fds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            match socket_error(p.fd) {
                0 => return Ok(Some(at)),
                libc::ECONNREFUSED => {
                    return Err(format!(
                        "{}: connection refused (is the service running?)",
                        self.dst
                    ));
                }
                _ => failed.push(i),
            }
        }
        for i in failed.into_iter().rev() {
            if i < self.attempts.len() {
                self.attempts.swap_remove(i);
            }
        }
        Ok(None)
    }
}

/// A non-blocking TCP socket bound to `src`, connecting to `dst`.
fn connect_nonblocking(src: Ipv4Addr, dst: SocketAddrV4) -> Result<OwnedFd, String> {
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket creation; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor we own; OwnedFd closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value and length. Port chosen at connect time, so thousands of
    // attempts do not use up the ports of one address.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let local = sockaddr(SocketAddrV4::new(src, 0));
    // SAFETY: `local` is a valid sockaddr_in of `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const local).cast(), len) } != 0 {
        return Err(format!("bind {src}: {}", std::io::Error::last_os_error()));
    }
    let remote = sockaddr(dst);
    // SAFETY: `remote` is a valid sockaddr_in of `len` bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const remote).cast(), len) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(format!("connect {dst}: {e}"));
        }
    }
    Ok(fd)
}

/// `SO_ERROR` of a socket (0: connected).
fn socket_error(fd: libc::c_int) -> libc::c_int {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        )
    };
    if rc != 0 { libc::EIO } else { err }
}

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

    #[test]
    fn probing_a_closed_then_open_port() {
        // A free port on loopback: refused is reported as an error.
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut p = Prober::new(Ipv4Addr::LOCALHOST, dst);
        let start = Instant::now();
        let mut opened = None;
        while opened.is_none() && start.elapsed() < Duration::from_secs(1) {
            opened = p.step(Instant::now()).unwrap();
        }
        assert!(opened.is_some());
        drop(l);
        let mut p = Prober::new(Ipv4Addr::LOCALHOST, dst);
        let mut refused = false;
        while !refused && start.elapsed() < Duration::from_secs(2) {
            refused = p.step(Instant::now()).is_err();
        }
        assert!(refused);
    }
}
