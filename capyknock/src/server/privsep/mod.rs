//! Privilege separation (Linux): the network-facing daemon gives up every capability and runs
//! under a seccomp allow-list; a small helper process keeps only `CAP_NET_ADMIN` and changes the
//! firewall on its behalf.
//!
//! Start-up ([`super::daemon`]): right after binding the control socket the daemon starts the
//! helper ([`Helper::spawn`]: `/proc/self/exe firewall-helper` with one end of a socketpair as
//! its standard input, before capture or the state directory are opened, so it inherits
//! nothing of them); it loads XDP and opens the ring buffer, the knock sockets and the state
//! directory; it sends the helper the `[firewall]` settings ([`Helper::open`]), and the
//! helper opens the backend, drops to `CAP_NET_ADMIN` and enters its filter
//! ([`helper::run`]). Then the daemon enters its own sandbox ([`sandbox::enter_network`]) before
//! it reads a single packet or control request.
//!
//! The firewall facade (ledger, `bans.json`, the ledger file) stays in the daemon; only the
//! [`Backend`] calls cross the socket ([`HelperBackend`]), as validated messages ([`wire`]).
//! So the code that parses packets and control requests cannot change the firewall other than
//! by asking for what a healthy daemon asks for, and cannot run programs, load BPF programs,
//! or touch other nftables tables.

pub mod helper;
pub mod sandbox;
pub mod wire;

use std::{
    net::IpAddr,
    os::{fd::OwnedFd, unix::net::UnixStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use wire::{Reply, Request, WireError};

use crate::{
    firewall::{self, Backend, Ban, ErrorChain, FirewallConfig, GrantKey, Ledger, PortGrant},
    ports::PortSpec,
};

/// The hidden subcommand that runs [`helper::run`].
pub const HELPER_SUBCOMMAND: &str = "firewall-helper";

/// How long the daemon waits for one answer (exec commands have their own, shorter timeout).
const REPLY_TIMEOUT: Duration = Duration::from_mins(1);

/// Whether privilege separation is on: the setting, or by default when running as root (a
/// daemon started without root has nothing to separate).
#[must_use]
pub fn wanted(setting: Option<bool>) -> bool {
    setting.unwrap_or_else(|| nix::unistd::geteuid().is_root())
}

/// The daemon's end of the helper: its socket and process. Cloning shares them.
#[derive(Debug, Clone)]
pub struct Helper {
    link: Arc<Mutex<Link>>,
}

#[derive(Debug)]
struct Link {
    sock: UnixStream,
    /// The helper; it exits when the socket closes.
    child: Child,
}

fn helper_err(what: impl std::fmt::Display) -> firewall::Error {
    firewall::Error::Helper(what.to_string())
}

impl Helper {
    /// Starts the helper process (still privileged: it drops to `CAP_NET_ADMIN` once it has
    /// opened the backend).
    pub fn spawn() -> Result<Self, firewall::Error> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| helper_err(ErrorChain(&e)))?;
        ours.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| helper_err(ErrorChain(&e)))?;
        let child = Command::new("/proc/self/exe")
            .arg(HELPER_SUBCOMMAND)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| helper_err(format!("cannot start the helper: {}", ErrorChain(&e))))?;
        tracing::debug!(pid = child.id(), "firewall helper started");
        Ok(Self {
            link: Arc::new(Mutex::new(Link { sock: ours, child })),
        })
    }

    /// The helper's process id.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.link.lock().ok().map(|l| l.child.id())
    }

    /// How the helper ended, if it has (`None` while it runs). Without it no grant, ban or
    /// repair can reach the firewall, and the network process has no capability left to start
    /// another: the daemon must exit so its service manager starts it afresh.
    #[must_use]
    pub fn exited(&self) -> Option<String> {
        let mut link = self.link.lock().ok()?;
        match link.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(err) => Some(format!("cannot be waited for: {err}")),
        }
    }

    fn call(&self, req: &Request) -> Result<Reply, firewall::Error> {
        let mut link = self
            .link
            .lock()
            .map_err(|_| helper_err("the helper link was poisoned"))?;
        let io = |e: WireError| helper_err(ErrorChain(&e));
        wire::write_frame(&mut link.sock, req).map_err(io)?;
        let body = wire::read_frame(&mut link.sock).map_err(io)?;
        match wire::decode::<Reply>(&body).map_err(io)? {
            Reply::Error(msg) => Err(firewall::Error::Helper(msg)),
            reply => Ok(reply),
        }
    }

    /// Sends the `[firewall]` settings (first message) and returns the backend the helper
    /// opened, to plug into the facade.
    pub fn open(
        &self,
        config: &FirewallConfig,
        protected: &[PortSpec],
        knock_drop: &[u16],
    ) -> Result<Box<dyn Backend>, firewall::Error> {
        let json = serde_json::to_string(config).map_err(helper_err)?;
        let reply = self.call(&Request::Init {
            config: json,
            protected: protected.iter().map(|p| (*p).into()).collect(),
            knock_drop: knock_drop.to_vec(),
        })?;
        self.backend(reply)
    }

    /// Reopens the backend protecting `protected` (a reload added ports).
    pub fn reopen(&self, protected: &[PortSpec]) -> Result<Box<dyn Backend>, firewall::Error> {
        let reply = self.call(&Request::Reopen {
            protected: protected.iter().map(|p| (*p).into()).collect(),
        })?;
        self.backend(reply)
    }

    fn backend(&self, reply: Reply) -> Result<Box<dyn Backend>, firewall::Error> {
        match reply {
            Reply::Info {
                name,
                expires_by_itself,
                persistent_ledger,
                atomic,
            } => Ok(Box::new(HelperBackend {
                helper: self.clone(),
                name: static_name(&name),
                expires_by_itself,
                persistent_ledger,
                atomic,
            })),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &Reply) -> firewall::Error {
    helper_err(format!("unexpected answer {reply:?}"))
}

/// Backend names are `&'static str`; the helper's come from this list.
fn static_name(name: &str) -> &'static str {
    match name {
        "nftables" => "nftables",
        "exec" => "exec",
        "none" => "none",
        "windows" => "windows",
        _ => "helper",
    }
}

/// A [`Backend`] whose every call is a request to the helper.
#[derive(Debug)]
pub struct HelperBackend {
    helper: Helper,
    name: &'static str,
    expires_by_itself: bool,
    persistent_ledger: bool,
    atomic: bool,
}

impl HelperBackend {
    fn done(&self, req: &Request) -> Result<(), firewall::Error> {
        match self.helper.call(req)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    fn yes_no(&self, req: &Request) -> Result<bool, firewall::Error> {
        match self.helper.call(req)? {
            Reply::Bool(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }
}

impl Backend for HelperBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    fn expires_by_itself(&self) -> bool {
        self.expires_by_itself
    }

    fn persistent_ledger(&self) -> bool {
        self.persistent_ledger
    }

    fn atomic(&self) -> bool {
        self.atomic
    }

    fn installed(&mut self, now: SystemTime) -> Result<Option<Ledger>, firewall::Error> {
        match self.helper.call(&Request::Installed)? {
            Reply::Installed(None) => Ok(None),
            Reply::Installed(Some((grants, bans))) => {
                // The helper is trusted, but its answer is checked like any message.
                let grants = wire::grants(&grants, now).map_err(helper_err)?;
                let bans = wire::bans(&bans).map_err(helper_err)?;
                Ok(Some(wire::ledger(grants, bans, now)))
            }
            other => Err(unexpected(&other)),
        }
    }

    fn add_grants(
        &mut self,
        grants: &[PortGrant],
        _now: SystemTime,
    ) -> Result<(), firewall::Error> {
        self.done(&Request::AddGrants(grants.iter().map(Into::into).collect()))
    }

    fn remove_grants(&mut self, keys: &[GrantKey]) -> Result<(), firewall::Error> {
        self.done(&Request::RemoveGrants(
            keys.iter().map(|k| (*k).into()).collect(),
        ))
    }

    fn add_ban(&mut self, ban: &Ban, _now: SystemTime) -> Result<bool, firewall::Error> {
        self.yes_no(&Request::AddBan(ban.into()))
    }

    fn remove_ban(&mut self, addr: IpAddr) -> Result<(), firewall::Error> {
        self.done(&Request::RemoveBan(addr))
    }

    fn is_intact(&mut self) -> Result<bool, firewall::Error> {
        self.yes_no(&Request::IsIntact)
    }

    fn restore(&mut self, ledger: &Ledger, _now: SystemTime) -> Result<(), firewall::Error> {
        let (grants, bans) = wire::from_ledger(ledger);
        self.done(&Request::Restore { grants, bans })
    }

    fn in_use(&mut self, key: &GrantKey) -> bool {
        self.yes_no(&Request::InUse((*key).into())).unwrap_or(false)
    }

    fn remove_all(&mut self, _ledger: &Ledger) -> Result<(), firewall::Error> {
        // The daemon never removes its rules (grants run out by themselves);
        // `capyknock firewall remove` runs without it.
        Err(helper_err(
            "removing every rule is not done through the helper",
        ))
    }
}
