//! The privileged firewall helper: `capyknock firewall-helper` (hidden), started by the daemon
//! with one end of a socketpair as its standard input.
//!
//! It reads [`Request::Init`] (sent before the daemon has read any network input), opens the
//! firewall backend, keeps only `CAP_NET_ADMIN`, enters its own seccomp filter, then answers
//! one request at a time until the daemon closes the socket. Every request is validated
//! ([`super::wire`]); a malformed or refused one gets [`Reply::Error`] and a warning in the log,
//! an oversized frame ends the helper (the stream cannot be trusted after it).

use std::{
    io,
    os::{fd::AsFd, unix::net::UnixStream},
    time::SystemTime,
};

use super::{
    sandbox,
    wire::{self, Reply, Request, WireError},
};
use crate::firewall::{self, Backend, ErrorChain, FirewallConfig, FirewallKind};

/// Why the helper stopped.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// Standard input is not the daemon's socket.
    #[error("standard input is not a socket from the capyknock daemon")]
    NoSocket(#[source] io::Error),
    /// The first message was not a valid `Init`.
    #[error("bad first message")]
    Init(#[source] WireError),
    /// The firewall could not be opened.
    #[error("cannot open the firewall")]
    Firewall(#[from] firewall::Error),
    /// The sandbox could not be entered.
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    /// The socket failed or a frame was over the limit.
    #[error("connection to the daemon")]
    Wire(#[source] WireError),
}

/// The helper's state: the backend and what it was opened with.
struct Helper {
    backend: Box<dyn Backend>,
    config: FirewallConfig,
    knock_drop: Vec<u16>,
}

/// Runs the helper until the daemon closes the socket (then `Ok`).
pub fn run() -> Result<(), HelperError> {
    let fd = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(HelperError::NoSocket)?;
    let mut sock = UnixStream::from(fd);
    // Fails unless standard input really is a Unix socket.
    sock.peer_addr().map_err(HelperError::NoSocket)?;

    let body = wire::read_frame(&mut sock).map_err(HelperError::Init)?;
    let (config, protected, knock_drop) = match wire::decode::<Request>(&body) {
        Ok(Request::Init {
            config,
            protected,
            knock_drop,
        }) => init_args(&config, &protected, &knock_drop).map_err(HelperError::Init)?,
        Ok(_) => {
            return Err(HelperError::Init(WireError::Invalid(
                "the first message must be Init".into(),
            )));
        }
        Err(err) => return Err(HelperError::Init(err)),
    };
    let backend = firewall::open_backend(&config, &protected, &knock_drop)?;
    // The exec backend runs the admin's programs, which would inherit the filter.
    let seccomp = config.backend.resolve() != FirewallKind::Exec;
    sandbox::enter_helper(seccomp)?;
    tracing::info!(
        backend = backend.name(),
        seccomp,
        "firewall helper ready (CAP_NET_ADMIN only)"
    );
    let mut helper = Helper {
        backend,
        config,
        knock_drop,
    };
    wire::write_frame(&mut sock, &helper.info()).map_err(HelperError::Wire)?;

    loop {
        let body = match wire::read_frame(&mut sock) {
            Ok(body) => body,
            Err(WireError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => {
                tracing::error!(error = %ErrorChain(&err), "firewall helper: unreadable frame; stopping");
                return Err(HelperError::Wire(err));
            }
        };
        let reply = match wire::decode::<Request>(&body) {
            Ok(req) => helper.handle(req),
            Err(err) => Err(err),
        }
        .unwrap_or_else(|err| {
            tracing::warn!(error = %ErrorChain(&err), "firewall helper: request refused");
            Reply::Error(ErrorChain(&err).to_string())
        });
        wire::write_frame(&mut sock, &reply).map_err(HelperError::Wire)?;
    }
}

fn init_args(
    config: &str,
    protected: &[wire::WirePort],
    knock_drop: &[u16],
) -> Result<(FirewallConfig, Vec<crate::ports::PortSpec>, Vec<u16>), WireError> {
    if config.len() > wire::MAX_CONFIG {
        return Err(WireError::Invalid("firewall settings too long".into()));
    }
    let config: FirewallConfig = serde_json::from_str(config)
        .map_err(|e| WireError::Invalid(format!("firewall settings: {e}")))?;
    Ok((
        config,
        wire::ports(protected)?,
        wire::knock_ports(knock_drop)?,
    ))
}

fn failed(err: &firewall::Error) -> WireError {
    WireError::Invalid(ErrorChain(err).to_string())
}

impl Helper {
    fn info(&self) -> Reply {
        Reply::Info {
            name: self.backend.name().to_owned(),
            expires_by_itself: self.backend.expires_by_itself(),
            persistent_ledger: self.backend.persistent_ledger(),
            atomic: self.backend.atomic(),
        }
    }

    /// Validates and applies one request. Times are the helper's own clock.
    fn handle(&mut self, req: Request) -> Result<Reply, WireError> {
        let now = SystemTime::now();
        let fw = |r: Result<(), firewall::Error>| r.map(|()| Reply::Done).map_err(|e| failed(&e));
        match req {
            Request::Init { .. } => Err(WireError::Invalid("Init was already received".into())),
            Request::Reopen { protected } => {
                let protected = wire::ports(&protected)?;
                self.backend = firewall::open_backend(&self.config, &protected, &self.knock_drop)
                    .map_err(|e| failed(&e))?;
                tracing::info!(ports = protected.len(), "firewall helper: backend reopened");
                Ok(self.info())
            }
            Request::Installed => {
                let ledger = self.backend.installed(now).map_err(|e| failed(&e))?;
                Ok(Reply::Installed(ledger.as_ref().map(wire::from_ledger)))
            }
            Request::AddGrants(list) => {
                let grants = wire::grants(&list, now)?;
                fw(self.backend.add_grants(&grants, now))
            }
            Request::RemoveGrants(list) => {
                let keys = wire::keys(&list)?;
                fw(self.backend.remove_grants(&keys))
            }
            Request::AddBan(ban) => {
                let ban = wire::ban(ban)?;
                self.backend
                    .add_ban(&ban, now)
                    .map(Reply::Bool)
                    .map_err(|e| failed(&e))
            }
            Request::RemoveBan(addr) => {
                let addr = crate::firewall::model::canonical_addr(addr)
                    .map_err(|e| WireError::Invalid(e.to_string()))?;
                fw(self.backend.remove_ban(addr))
            }
            Request::IsIntact => self
                .backend
                .is_intact()
                .map(Reply::Bool)
                .map_err(|e| failed(&e)),
            Request::Restore { grants, bans } => {
                let ledger = wire::ledger(wire::grants(&grants, now)?, wire::bans(&bans)?, now);
                fw(self.backend.restore(&ledger, now))
            }
            Request::InUse(key) => {
                let key = wire::key(key)?;
                Ok(Reply::Bool(self.backend.in_use(&key)))
            }
        }
    }
}
