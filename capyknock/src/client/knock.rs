//! `capyknock knock`: check the port, get a code, send the knock, check again, retry.
//!
//! Progress goes to stderr (stdout is the data stream in `--proxy` mode). Every failure ends
//! in a [`KnockError`] whose [`KnockError::exit_code`] is the documented exit status.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime},
};

use capyknock_common::wire::TIME_STEP_SECONDS;

use super::{
    args::KnockArgs,
    code::{self, CodeError},
    config::{self, ClientConfigError, CodeSource, Profile, SelectError},
    probe::{self, CHECK_TIMEOUT, Family, Probe, ResolveError},
    proxy::{self, ProxyError},
    send::{self, SendError},
};
use crate::{
    ports::PortSpec,
    protocol::{
        packet::KnockRequest,
        payload::MAX_PORTS,
        totp::{TotpCode, step_of},
        unix_secs,
    },
};

/// Exit status: the port answers, or the knock was sent with `--no-check`.
pub const EXIT_OK: u8 = 0;
/// Exit status: an unexpected error (sending, relaying).
pub const EXIT_ERROR: u8 = 1;
/// Exit status: a usage or configuration problem.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the server name did not resolve.
pub const EXIT_RESOLVE: u8 = 3;
/// Exit status: the port stayed closed after the last attempt.
pub const EXIT_STILL_CLOSED: u8 = 4;
/// Exit status: no code could be had.
pub const EXIT_NO_CODE: u8 = 5;
/// Exit status: the knock opened the port (dropped before, refused after), but nothing listens.
pub const EXIT_NO_SERVICE: u8 = 6;

/// Most malformed codes accepted at the prompt before giving up.
const MAX_BAD_INPUT: u32 = 3;
/// Pause between sending and the first check, for the firewall rule to land.
const SETTLE: Duration = Duration::from_millis(100);

/// Why `knock` did not get the port open.
#[derive(Debug, thiserror::Error)]
pub enum KnockError {
    /// Reading the client config failed.
    #[error(transparent)]
    Config(#[from] ClientConfigError),
    /// No profile matched.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// Flags that do not fit the profile.
    #[error("{0}")]
    Usage(String),
    /// The server name did not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// No code.
    #[error(transparent)]
    Code(#[from] CodeError),
    /// Sending failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Every attempt failed.
    #[error(
        "{spec} on {addr} still closed after {attempts} knock(s): wrong code, clock skew, or \
         blocked path? (check this computer's clock; the server's log names the reason)"
    )]
    StillClosed {
        /// The port checked.
        spec: PortSpec,
        /// The address.
        addr: IpAddr,
        /// Knocks sent.
        attempts: u32,
    },
    /// The knock worked (the port went from dropped to refused) but no service listens.
    #[error(
        "the knock opened {spec} on {addr} (dropped before, refused after), but nothing listens \
         there: check the service on the server (is it running, on {spec}?)"
    )]
    NoService {
        /// The port checked.
        spec: PortSpec,
        /// The address.
        addr: IpAddr,
    },
    /// No server address worked.
    #[error("no address of {host} is reachable: {last}")]
    Unreachable {
        /// The server.
        host: String,
        /// Last error.
        last: String,
    },
    /// The relay failed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// `--save-packet` could not write its file.
    #[error("cannot write the knock packet to {}", path.display())]
    SavePacket {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl KnockError {
    /// The process exit status for this error (documented in `capyknock knock --help`).
    #[must_use]
    pub const fn exit_code(&self) -> u8 {
        match self {
            KnockError::Config(_)
            | KnockError::Select(_)
            | KnockError::Usage(_)
            | KnockError::Code(CodeError::Bad(_)) => EXIT_USAGE,
            KnockError::Resolve(_) => EXIT_RESOLVE,
            KnockError::Code(_) => EXIT_NO_CODE,
            KnockError::StillClosed { .. } => EXIT_STILL_CLOSED,
            KnockError::NoService { .. } => EXIT_NO_SERVICE,
            KnockError::Send(_)
            | KnockError::Unreachable { .. }
            | KnockError::Proxy(_)
            | KnockError::SavePacket { .. } => EXIT_ERROR,
        }
    }
}

/// Progress lines on stderr, unless quiet.
#[derive(Debug, Clone, Copy)]
struct Progress {
    quiet: bool,
}

impl Progress {
    fn say(self, line: &str) {
        if !self.quiet {
            eprintln!("capyknock: {line}");
        }
    }
}

/// What happened, for callers and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The port answered before any knock.
    AlreadyOpen,
    /// A knock opened it (after this many attempts).
    Opened(u32),
    /// Sent without checking.
    Sent,
}

/// Runs `capyknock knock`.
pub fn run(args: &KnockArgs) -> Result<Outcome, KnockError> {
    let path = config::resolve_path(args.client_config.as_deref())?;
    let config = config::load(&path)?;
    let profile = config.select(args.profile.as_deref())?;
    Knock::new(args, profile)?.run()
}

/// Where the code for each attempt comes from.
enum Codes<'a> {
    /// `--otp` or `--otp-stdin`: one code, read before anything is sent.
    Given(Option<TotpCode>),
    Prompt {
        last: Option<TotpCode>,
    },
    Derived {
        secret: &'a crate::protocol::keys::TotpSecret,
        last_step: Option<u64>,
    },
}

struct Knock<'a> {
    args: &'a KnockArgs,
    profile: &'a Profile,
    progress: Progress,
    family: Family,
    check: Option<PortSpec>,
    request: KnockRequest,
    codes: Codes<'a>,
    attempts: u32,
}

impl<'a> Knock<'a> {
    fn new(args: &'a KnockArgs, profile: &'a Profile) -> Result<Self, KnockError> {
        let check = args.port.or(profile.check_port).map(PortSpec::tcp);
        if args.proxy && check.is_none() {
            return Err(KnockError::Usage(format!(
                "--proxy needs a TCP port: pass --port N (ssh: --port %p) or set check_port in \
                 profile {:?}",
                profile.name
            )));
        }
        let mut ports = profile.ports.clone();
        if let Some(spec) = args.port.map(PortSpec::tcp)
            && !ports.is_empty()
            && !ports.contains(&spec)
            && ports.len() < MAX_PORTS
        {
            ports.push(spec);
        }
        let request = KnockRequest {
            ports,
            allow_ip: args.allow_ip.or(profile.allow_ip),
        };
        let (codes, attempts) = if let Some(otp) = &args.otp {
            (Codes::Given(Some(code::from_arg(otp)?)), 1)
        } else if args.otp_stdin {
            // Read (and check) now: a malformed code fails before any probe or packet.
            (Codes::Given(Some(code::from_stdin()?)), 1)
        } else {
            match &profile.code {
                CodeSource::Prompt => (Codes::Prompt { last: None }, args.attempts),
                // The next step's code is accepted too (one step of skew), so a machine profile
                // can retry once at once; after that it would have to wait for the clock.
                CodeSource::Derived(secret) => (
                    Codes::Derived {
                        secret,
                        last_step: None,
                    },
                    args.attempts.min(2),
                ),
            }
        };
        let family = match (args.ipv4, args.ipv6) {
            (true, _) => Family::V4,
            (_, true) => Family::V6,
            _ => Family::Any,
        };
        Ok(Self {
            args,
            profile,
            progress: Progress { quiet: args.quiet },
            family,
            check,
            request,
            codes,
            attempts,
        })
    }

    fn run(mut self) -> Result<Outcome, KnockError> {
        let addrs = probe::resolve(&self.profile.server, self.family)?;
        let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
        self.progress.say(&format!(
            "profile {} ({}): {} is {}",
            self.profile.name,
            self.profile.label(),
            self.profile.server,
            list.join(", ")
        ));
        let mut last_err = String::new();
        for (i, &addr) in addrs.iter().enumerate() {
            let more = i + 1 < addrs.len();
            match self.with_address(addr) {
                Err(KnockError::Send(e)) if more => {
                    last_err = e.to_string();
                    self.progress.say(&format!("{e}; trying the next address"));
                }
                Err(KnockError::Unreachable { last, .. }) if more => {
                    self.progress.say(&format!(
                        "{addr} unreachable ({last}); trying the next address"
                    ));
                    last_err = last;
                }
                other => return other,
            }
        }
        Err(KnockError::Unreachable {
            host: self.profile.server.clone(),
            last: last_err,
        })
    }

    /// The whole story against one address of the server.
    fn with_address(&mut self, addr: IpAddr) -> Result<Outcome, KnockError> {
        let mut dropped_before = false;
        if let (Some(spec), false) = (self.check, self.args.no_check) {
            let target = SocketAddr::new(addr, spec.port);
            let first = probe::probe(target, CHECK_TIMEOUT);
            self.progress
                .say(&format!("{spec} on {addr}: {}", first.describe()));
            match first {
                Probe::Open(stream) if self.asks_only_for(spec) => {
                    self.progress.say("already open: no knock needed");
                    return self.finish(Outcome::AlreadyOpen, Some(stream));
                }
                // Open, perhaps through another user's grant for the same address (one NAT):
                // that does not open this profile's other ports, nor last as long.
                Probe::Open(_) => self.progress.say(
                    "already answers, but this profile asks for more ports: knocking for all \
                     of them",
                ),
                Probe::Failed(e) => {
                    return Err(KnockError::Unreachable {
                        host: self.profile.server.clone(),
                        last: e.to_string(),
                    });
                }
                Probe::Timeout => dropped_before = true,
                Probe::Refused => {}
            }
        }
        let knock_to = SocketAddr::new(addr, self.profile.knock_port);
        let mut last_probe = None;
        for attempt in 1..=self.attempts {
            if attempt > 1 && matches!(self.codes, Codes::Prompt { .. }) {
                self.progress.say(&format!(
                    "attempt {attempt} of {}: each code opens only once, so wait for the next \
                     code in your app",
                    self.attempts
                ));
            }
            let (code, now) = self.next_code()?;
            let packet = send::build(
                &self.profile.user_id,
                &self.profile.key,
                &code,
                &self.request,
                now,
            )?;
            if let Some(path) = &self.args.save_packet {
                crate::private_file::write_private(path, &packet).map_err(|source| {
                    KnockError::SavePacket {
                        path: path.clone(),
                        source,
                    }
                })?;
            }
            let copies = send::send(&packet, knock_to)?;
            self.progress.say(&format!(
                "knock sent to {} udp/{} ({copies} copies)",
                addr, self.profile.knock_port
            ));
            let Some(spec) = self
                .check
                .filter(|_| !self.args.no_check || self.args.proxy)
            else {
                if self.check.is_none() {
                    self.progress
                        .say("no TCP port to check (no --port, no tcp port in the profile)");
                }
                return self.finish(Outcome::Sent, None);
            };
            std::thread::sleep(SETTLE);
            let target = SocketAddr::new(addr, spec.port);
            let result =
                probe::wait_open(target, Duration::from_secs(self.args.wait), dropped_before);
            match result {
                Probe::Open(stream) => {
                    self.progress.say(&format!("{spec} on {addr}: open"));
                    return self.finish(Outcome::Opened(attempt), Some(stream));
                }
                // Dropped before, refused now: the firewall opened; nothing listens. Knocking
                // again would not help.
                Probe::Refused if dropped_before => {
                    return Err(KnockError::NoService { spec, addr });
                }
                Probe::Refused => self.progress.say(&format!(
                    "{spec} on {addr}: connection refused before and after the knock: is a \
                     service listening on {spec}? (a firewall that rejects rather than drops \
                     looks the same)"
                )),
                other => self.progress.say(&format!(
                    "port still closed after knock: wrong code, clock skew, or blocked path? \
                     ({spec} on {addr}: {})",
                    other.describe()
                )),
            }
            last_probe = Some(spec);
        }
        Err(KnockError::StillClosed {
            spec: last_probe.unwrap_or(PortSpec::tcp(0)),
            addr,
            attempts: self.attempts,
        })
    }

    /// Whether the knock would ask for `spec` alone, so an open `spec` means nothing is left
    /// to open. An empty request means all the user's ports, which may be more.
    fn asks_only_for(&self, spec: PortSpec) -> bool {
        !self.request.ports.is_empty() && self.request.ports.iter().all(|p| *p == spec)
    }

    /// The code for the next attempt, and the time to put in the packet.
    fn next_code(&mut self) -> Result<(TotpCode, u64), KnockError> {
        let label = self.profile.label();
        let now = || unix_secs(SystemTime::now());
        match &mut self.codes {
            Codes::Given(code) => {
                let code = code.take().ok_or_else(|| {
                    KnockError::Usage("a code given with --otp is used only once".into())
                })?;
                Ok((code, now()))
            }
            Codes::Prompt { last } => {
                let mut bad = 0;
                loop {
                    match code::prompt(&format!("Code for {label}: ")) {
                        Ok(code) if last.as_ref() == Some(&code) => {
                            eprintln!(
                                "capyknock: that code was sent already and opens only once: wait \
                                 for the next one"
                            );
                        }
                        Ok(code) => {
                            *last = Some(code.clone());
                            return Ok((code, now()));
                        }
                        Err(e @ CodeError::Bad(_)) => eprintln!("capyknock: {e}"),
                        Err(e) => return Err(e.into()),
                    }
                    bad += 1;
                    if bad >= MAX_BAD_INPUT {
                        return Err(KnockError::Code(CodeError::Bad(
                            crate::protocol::totp::TotpError::BadCode,
                        )));
                    }
                }
            }
            Codes::Derived { secret, last_step } => {
                let t = now();
                let step = match *last_step {
                    Some(prev) => step_of(t).max(prev.saturating_add(1)),
                    None => step_of(t),
                };
                *last_step = Some(step);
                let code = code::derived(secret, step.saturating_mul(TIME_STEP_SECONDS))?;
                Ok((code, t))
            }
        }
    }

    /// Ends a successful run: relay in proxy mode (connecting first if the port was not
    /// checked), else done.
    fn finish(
        &self,
        outcome: Outcome,
        stream: Option<std::net::TcpStream>,
    ) -> Result<Outcome, KnockError> {
        if !self.args.proxy {
            return Ok(outcome);
        }
        let Some(stream) = stream else {
            return Err(KnockError::Usage("--proxy needs the port to answer".into()));
        };
        let relayed = proxy::relay_stdio(stream)?;
        tracing::debug!(
            to_server = relayed.to_server,
            from_server = relayed.from_server,
            "relay done"
        );
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};

    use clap::Parser as _;

    use super::*;
    use crate::protocol::keys::{TotpSecret, UserId, UserKey};

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: KnockArgs,
    }

    fn args(list: &[&str]) -> KnockArgs {
        Cli::try_parse_from(std::iter::once("knock").chain(list.iter().copied()))
            .unwrap()
            .args
    }

    fn profile(knock_port: u16, ports: Vec<PortSpec>, code: CodeSource) -> Profile {
        Profile {
            name: "t".into(),
            server: "127.0.0.1".into(),
            knock_port,
            check_port: ports
                .iter()
                .find(|p| p.protocol == crate::ports::Protocol::Tcp)
                .map(|p| p.port),
            ports,
            nickname: Some("alice".into()),
            user_id: UserId([1; 16]),
            key: UserKey::from_bytes([2; 32]),
            code,
            allow_ip: None,
        }
    }

    #[test]
    fn already_open_port_sends_nothing() {
        let service = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = service.local_addr().unwrap().port();
        let knock_rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        knock_rx.set_nonblocking(true).unwrap();
        let p = profile(
            knock_rx.local_addr().unwrap().port(),
            vec![PortSpec::tcp(port)],
            CodeSource::Prompt,
        );
        let a = args(&["-q"]);
        assert_eq!(
            Knock::new(&a, &p).unwrap().run().unwrap(),
            Outcome::AlreadyOpen
        );
        assert!(knock_rx.recv(&mut [0u8; 2048]).is_err(), "a knock was sent");
    }

    #[test]
    fn an_open_port_still_knocks_when_the_profile_asks_for_more() {
        // tcp/port answers (say, through another user's grant behind the same NAT), but the
        // profile also asks for tcp/1: the knock goes out for both.
        let service = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = service.local_addr().unwrap().port();
        let knock_rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = profile(
            knock_rx.local_addr().unwrap().port(),
            vec![PortSpec::tcp(port), PortSpec::tcp(1)],
            CodeSource::Prompt,
        );
        let a = args(&["-q", "--otp", "123456"]);
        assert_eq!(
            Knock::new(&a, &p).unwrap().run().unwrap(),
            Outcome::Opened(1)
        );
        let n = knock_rx.recv(&mut [0u8; 2048]).unwrap();
        assert_eq!(n, capyknock_common::wire::KNOCK_LEN);
    }

    #[test]
    fn no_check_sends_and_exits() {
        let knock_rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = profile(
            knock_rx.local_addr().unwrap().port(),
            vec![PortSpec::tcp(1)],
            CodeSource::Prompt,
        );
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("knock.bin");
        let a = args(&[
            "-q",
            "--no-check",
            "--otp",
            "123456",
            "--save-packet",
            saved.to_str().unwrap(),
        ]);
        assert_eq!(Knock::new(&a, &p).unwrap().run().unwrap(), Outcome::Sent);
        let mut buf = [0u8; 2048];
        let n = knock_rx.recv(&mut buf).unwrap();
        assert_eq!(n, capyknock_common::wire::KNOCK_LEN);
        assert_eq!(std::fs::read(&saved).unwrap(), &buf[..n]);
    }

    #[test]
    fn port_that_stays_closed_fails_with_exit_4() {
        // A refused port that never opens; the knock goes to a UDP socket nobody answers from.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let knock_rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = profile(
            knock_rx.local_addr().unwrap().port(),
            vec![PortSpec::tcp(port)],
            CodeSource::Derived(TotpSecret::from_bytes([5; 20])),
        );
        let a = args(&["-q", "--wait", "1"]);
        let err = Knock::new(&a, &p).unwrap().run().unwrap_err();
        assert_eq!(err.exit_code(), EXIT_STILL_CLOSED, "{err}");
        assert!(
            err.to_string()
                .contains("wrong code, clock skew, or blocked path?")
        );
        // Derived profiles try twice: the current step, then the next one.
        let mut buf = [0u8; 2048];
        knock_rx
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut packets = Vec::new();
        while let Ok(n) = knock_rx.recv(&mut buf) {
            packets.push(buf[..n].to_vec());
        }
        assert_eq!(packets.len(), 2 * send::COPIES);
        assert_ne!(packets[0], packets[send::COPIES]);
    }

    #[test]
    fn derived_codes_advance_one_step_per_attempt() {
        let secret = TotpSecret::from_bytes([5; 20]);
        let p = profile(
            1,
            vec![PortSpec::tcp(22)],
            CodeSource::Derived(secret.clone()),
        );
        let a = args(&[]);
        let mut k = Knock::new(&a, &p).unwrap();
        assert_eq!(k.attempts, 2);
        let (c1, t) = k.next_code().unwrap();
        let (c2, _) = k.next_code().unwrap();
        let totp = crate::protocol::totp::Totp::new(&secret).unwrap();
        let Codes::Derived {
            last_step: Some(s2),
            ..
        } = k.codes
        else {
            panic!()
        };
        assert!(s2 == step_of(t) + 1 || s2 == step_of(t) + 2);
        assert_eq!(totp.code_at(s2 * 30), c2);
        assert_eq!(totp.code_at((s2 - 1) * 30), c1);
    }

    #[test]
    fn port_flag_is_added_to_the_request_and_proxy_needs_a_port() {
        let p = profile(1, vec![PortSpec::tcp(22)], CodeSource::Prompt);
        let a = args(&["--port", "2222", "--otp", "000001"]);
        let k = Knock::new(&a, &p).unwrap();
        assert_eq!(
            k.request.ports,
            vec![PortSpec::tcp(22), PortSpec::tcp(2222)]
        );
        assert_eq!(k.check, Some(PortSpec::tcp(2222)));
        assert_eq!(k.attempts, 1);
        let p = profile(1, vec![PortSpec::udp(51820)], CodeSource::Prompt);
        let a = args(&["--proxy"]);
        let err = Knock::new(&a, &p).err().unwrap();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        let a = args(&["--otp", "12"]);
        assert_eq!(Knock::new(&a, &p).err().unwrap().exit_code(), EXIT_USAGE);
    }

    #[test]
    fn conflicting_flags_are_refused_by_clap() {
        for bad in [
            &["--otp", "123456", "--otp-stdin"][..],
            &["--proxy", "--otp-stdin"],
            &["-4", "-6"],
            &["--port", "0"],
            &["--attempts", "0"],
        ] {
            let parsed = Cli::try_parse_from(std::iter::once("knock").chain(bad.iter().copied()));
            assert!(parsed.is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        let codes = [
            EXIT_OK,
            EXIT_ERROR,
            EXIT_USAGE,
            EXIT_RESOLVE,
            EXIT_STILL_CLOSED,
            EXIT_NO_CODE,
            EXIT_NO_SERVICE,
        ];
        let mut sorted = codes.to_vec();
        sorted.dedup();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4, 5, 6]);
        let resolve = KnockError::Resolve(probe::resolve("::1", Family::V4).unwrap_err());
        assert_eq!(resolve.exit_code(), EXIT_RESOLVE);
    }
}
