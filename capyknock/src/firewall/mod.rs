//! Firewall backends behind one facade: nftables (netlink) on Linux, Windows Firewall, an exec
//! backend with argv templates, and `none`.
//!
//! The daemon drives a [`Firewall`]: [`Firewall::open`] once (creates or repairs our rules
//! without dropping current grants), [`Firewall::grant`] after each verified knock,
//! [`Firewall::check_and_repair`] every few seconds (closes expired grants on backends without
//! kernel timeouts, restores deleted rules), [`Firewall::ban`]/[`Firewall::unban`] from the
//! control socket. All calls are synchronous and fast (an nftables batch takes well under a
//! millisecond; exec runs programs), so the daemon calls them from one dedicated task.
//!
//! The facade keeps a [`model::Ledger`] of what should be open: repeat knocks extend, banned
//! addresses get nothing, expired entries are collected, and a deleted table is rebuilt with
//! every grant's remaining time. Backends only translate ledger changes into firewall
//! changes ([`Backend`]); tests of the daemon can plug in their own.

pub mod bans_file;
pub mod cli;
pub mod config;
pub mod exec;
pub mod model;
#[cfg(target_os = "linux")]
pub mod nftables;
pub mod none;
pub mod persist;
#[cfg(windows)]
#[allow(unsafe_code, reason = "Windows Firewall's COM API")]
pub mod windows;
pub mod windows_model;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::SystemTime,
};

pub use config::{ExecConfig, FirewallConfig, FirewallKind};
pub use model::{Ban, BanList, GrantKey, Ledger, Owner, PortGrant};

use crate::ports::PortSpec;

/// What a backend must do; the [`Firewall`] facade decides when.
///
/// Every method gets final values: grants are deduplicated, merged with earlier ones (the
/// `until` given is the one to apply) and never for banned addresses.
pub trait Backend: fmt::Debug + Send {
    /// Short name for logs and status (`nftables`, `windows`, `exec`, `none`).
    fn name(&self) -> &'static str;

    /// True when the firewall itself expires grants and bans (nftables set timeouts); false
    /// when the facade must remove them when their time is up.
    fn expires_by_itself(&self) -> bool;

    /// True when the facade should keep the ledger in the state directory, so that after a
    /// restart it can still close what expired meanwhile.
    fn persistent_ledger(&self) -> bool;

    /// Grants and bans the firewall holds now, when it can tell (nftables reads its sets back,
    /// so a restarted daemon knows every grant and its remaining time). `None` means unknown:
    /// the facade uses the ledger file instead.
    fn installed(&mut self, _now: SystemTime) -> Result<Option<Ledger>, Error> {
        Ok(None)
    }

    /// True when a failed change leaves the firewall exactly as before (nftables batches).
    /// Otherwise part of a failed change may have been applied, and the facade keeps the
    /// grants in its ledger so they are closed at their end (closing is idempotent).
    fn atomic(&self) -> bool {
        false
    }

    /// Opens or refreshes these grants, each until its `until`.
    fn add_grants(&mut self, grants: &[PortGrant], now: SystemTime) -> Result<(), Error>;

    /// Closes these grants (revoked or expired). Closing one that is not open is not an error.
    fn remove_grants(&mut self, keys: &[GrantKey]) -> Result<(), Error>;

    /// Bans an address. Returns false when the backend cannot ban (an exec config without
    /// `ban`): the facade then closes the address's grants instead.
    fn add_ban(&mut self, ban: &Ban, now: SystemTime) -> Result<bool, Error>;

    /// Lifts a ban. Lifting one that does not exist is not an error.
    fn remove_ban(&mut self, addr: IpAddr) -> Result<(), Error>;

    /// Whether our rules are all in place (nftables lists its table back). Backends that cannot
    /// check say true.
    fn is_intact(&mut self) -> Result<bool, Error> {
        Ok(true)
    }

    /// Creates or repairs our rules and makes the firewall hold exactly what `ledger` says,
    /// without interrupting grants that are already open.
    fn restore(&mut self, ledger: &Ledger, now: SystemTime) -> Result<(), Error>;

    /// Whether an established connection still uses this (expired) grant, so its rule should
    /// stay for now. Only asked when `keep_established` is on; default false.
    fn in_use(&mut self, _key: &GrantKey) -> bool {
        false
    }

    /// Removes everything this backend created.
    fn remove_all(&mut self, ledger: &Ledger) -> Result<(), Error>;
}

/// Errors of the firewall facade and its backends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `[firewall]` settings are unusable.
    #[error("invalid firewall settings")]
    Config(#[from] config::ConfigError),
    /// A grant or ban was refused before reaching the firewall.
    #[error("firewall request refused")]
    Model(#[from] model::ModelError),
    /// The backend does not exist on this platform.
    #[error("the {kind} firewall backend is not available on this system: {hint}")]
    Unavailable {
        /// The backend asked for.
        kind: FirewallKind,
        /// What to do instead.
        hint: &'static str,
    },
    /// `backend = "exec"` without `[firewall.exec]`.
    #[error(
        "the exec firewall backend needs a [firewall.exec] section with `open` and `close` commands (see docs/FIREWALL.md)"
    )]
    NoExecConfig,
    /// nftables failed.
    #[cfg(target_os = "linux")]
    #[error("nftables")]
    Nftables(#[from] nftables::NftError),
    /// Windows Firewall failed.
    #[cfg(windows)]
    #[error("Windows Firewall")]
    Windows(#[from] windows::WinFwError),
    /// Some exec commands failed (each failure is logged; this carries the first).
    #[error("{failed} firewall '{action}' command(s) failed")]
    Exec {
        /// `open`, `close`, `ban` or `unban`.
        action: &'static str,
        /// How many failed.
        failed: usize,
        /// The first failure.
        #[source]
        source: exec::ExecError,
    },
    /// The ledger file could not be read.
    #[error("firewall ledger")]
    Ledger(#[from] persist::PersistError),
    /// The privileged firewall helper refused or failed a request, or cannot be reached
    /// (`server::privsep`).
    #[error("firewall helper: {0}")]
    Helper(String),
    /// Our rules are still not in place after a repair.
    #[error(
        "the {backend} firewall rules are still incomplete after repairing them; is another program changing them?"
    )]
    NotIntact {
        /// Backend name.
        backend: &'static str,
    },
}

pub use crate::error_chain::ErrorChain;

/// What [`Firewall::check_and_repair`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Everything was in place.
    Intact,
    /// Our rules were missing or damaged and have been restored (logged at warn).
    Restored,
}

/// What [`Firewall::grant`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Granted {
    /// Grants applied, with the expiry now in force (a repeat knock never shortens one).
    pub applied: Vec<PortGrant>,
    /// Grants refused because their address is banned (logged).
    pub refused_banned: Vec<GrantKey>,
}

/// The firewall the daemon drives: one backend plus the ledger of what is open.
#[derive(Debug)]
pub struct Firewall {
    backend: Box<dyn Backend>,
    ledger: Ledger,
    ledger_file: Option<PathBuf>,
    /// `bans.json` in the state directory: the bans survive what the firewall forgets (a
    /// reboot empties nftables). The facade is the one owner of the bans.
    bans_file: Option<PathBuf>,
    keep_established: bool,
}

impl Firewall {
    /// Opens the backend chosen by `config` (`auto`: nftables on Linux, Windows Firewall on
    /// Windows) for the `protected` ports, dropping UDP to `knock_ports` (nftables; pass an
    /// empty slice when the knock is read from a plain UDP socket, which must receive it).
    /// Creates or repairs our rules without dropping grants that are already open, and
    /// closes grants that expired while the daemon was down. `state_dir` holds the ledger of
    /// backends without kernel timeouts.
    pub fn open(
        config: &FirewallConfig,
        protected: &[PortSpec],
        knock_ports: &[u16],
        state_dir: &Path,
    ) -> Result<Self, Error> {
        config.validate()?;
        let backend = make_backend(config, protected, knock_ports)?;
        Self::with_backend(backend, Some(state_dir), config.keep_established)
    }

    /// Like [`Firewall::open`] with a backend of the caller's (tests, embedding).
    pub fn with_backend(
        backend: Box<dyn Backend>,
        state_dir: Option<&Path>,
        keep_established: bool,
    ) -> Result<Self, Error> {
        Self::open_at(backend, state_dir, keep_established, SystemTime::now())
    }

    fn open_at(
        mut backend: Box<dyn Backend>,
        state_dir: Option<&Path>,
        keep_established: bool,
        now: SystemTime,
    ) -> Result<Self, Error> {
        let ledger_file = state_dir
            .filter(|_| backend.persistent_ledger())
            .map(|dir| persist::ledger_path(dir, backend.name()));
        let bans_file = state_dir.map(bans_file::path);
        let mut ledger = match backend.installed(now)? {
            Some(ledger) => ledger,
            None => match &ledger_file {
                Some(path) => load_ledger(path, backend.name(), now)?,
                None => Ledger::new(),
            },
        };
        // Saved bans come back whatever the firewall still holds (a reboot empties nftables);
        // bans the firewall holds but the file lost (a damaged file) are kept too.
        for ban in bans_file
            .as_deref()
            .map(bans_file::load)
            .unwrap_or_default()
        {
            if ledger.ban_of(ban.addr).is_none() {
                ledger.insert_ban(ban, now);
            }
        }
        let mut fw = Self {
            backend,
            ledger,
            ledger_file,
            bans_file,
            keep_established,
        };
        fw.expire(now);
        fw.backend.restore(&fw.ledger, now)?;
        if !fw.backend.is_intact()? {
            return Err(Error::NotIntact {
                backend: fw.backend.name(),
            });
        }
        fw.save();
        fw.save_bans();
        tracing::info!(
            backend = fw.backend.name(),
            grants = fw.ledger.grant_count(),
            bans = fw.ledger.ban_count(),
            "firewall ready"
        );
        Ok(fw)
    }

    /// Backend name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.backend.name()
    }

    /// Opens (or refreshes) grants in one change. A repeat grant extends the time left and
    /// never shortens it; grants for banned addresses are refused and logged. When the
    /// firewall refuses the change, an atomic backend (nftables) records nothing of it; other
    /// backends keep the grants in the ledger, since part of the change may have been made,
    /// so that they are closed at their end.
    pub fn grant(&mut self, grants: &[PortGrant]) -> Result<Granted, Error> {
        self.grant_at(grants, SystemTime::now())
    }

    fn grant_at(&mut self, grants: &[PortGrant], now: SystemTime) -> Result<Granted, Error> {
        let before = self.ledger.clone_entries(grants);
        let merged = self.ledger.merge_grants(grants, now)?;
        for key in &merged.refused_banned {
            tracing::warn!(addr = %key.addr, port = %key.port_spec(), "not granting: address is banned");
        }
        if !merged.apply.is_empty() {
            if let Err(err) = self.backend.add_grants(&merged.apply, now) {
                if self.backend.atomic() {
                    self.ledger.restore_entries(before);
                } else {
                    self.save();
                }
                return Err(err);
            }
            for g in &merged.apply {
                tracing::debug!(addr = %g.addr, port = %g.key().port_spec(), until = %crate::log_fields::Until(Some(g.until)), "granted");
            }
            self.save();
        }
        Ok(Granted {
            applied: merged.apply,
            refused_banned: merged.refused_banned,
        })
    }

    /// Closes every grant owned by one of `users` now (users removed from the configuration);
    /// returns how many there were. Grants of other users, even from the same address, stay.
    pub fn revoke_owned_by(
        &mut self,
        users: &[crate::protocol::keys::UserId],
    ) -> Result<usize, Error> {
        let keys = self.ledger.remove_owned_by(users);
        if keys.is_empty() {
            return Ok(0);
        }
        let result = self.backend.remove_grants(&keys);
        self.save();
        result.map(|()| keys.len())
    }

    /// Closes every grant of `addr` now; returns how many there were.
    pub fn revoke(&mut self, addr: IpAddr) -> Result<usize, Error> {
        let keys = self.ledger.remove_addr(addr);
        if keys.is_empty() {
            return Ok(0);
        }
        let result = self.backend.remove_grants(&keys);
        self.save();
        result.map(|()| keys.len())
    }

    /// Bans `addr` until `until` (`None`: until unbanned). A ban beats a grant: the address is
    /// dropped on every protected port, established connections included, and gets no new
    /// grants. Banning again replaces the earlier expiry.
    pub fn ban(&mut self, addr: IpAddr, until: Option<SystemTime>) -> Result<(), Error> {
        self.ban_at(addr, until, SystemTime::now())
    }

    fn ban_at(
        &mut self,
        addr: IpAddr,
        until: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<(), Error> {
        let previous = self.ledger.ban_of(addr);
        let Some(ban) = self.ledger.set_ban(Ban { addr, until }, now)? else {
            return Ok(());
        };
        match self.backend.add_ban(&ban, now) {
            Ok(true) => {}
            Ok(false) => {
                // No ban command: closing the address's grants is the next best thing; the
                // ledger refuses it new ones while the ban lasts.
                let keys = self.ledger.remove_addr(ban.addr);
                if !keys.is_empty() {
                    self.backend.remove_grants(&keys)?;
                }
            }
            Err(err) => {
                self.ledger.remove_ban(ban.addr);
                if let Some(prev) = previous {
                    self.ledger.insert_ban(prev, now);
                }
                return Err(err);
            }
        }
        tracing::info!(addr = %ban.addr, until = %crate::log_fields::Until(ban.until), "banned");
        self.save();
        self.save_bans();
        Ok(())
    }

    /// Lifts the ban of `addr` (also when the ledger does not know it, so a ban left behind by
    /// an older run can be lifted) and says whether there was one. Grants it still has apply
    /// again.
    pub fn unban(&mut self, addr: IpAddr) -> Result<bool, Error> {
        let addr = model::canonical_addr(addr)?;
        let was_banned = self.ledger.remove_ban(addr);
        self.backend.remove_ban(addr)?;
        tracing::info!(%addr, was_banned, "unbanned");
        self.save();
        self.save_bans();
        Ok(was_banned)
    }

    /// A snapshot of the bans, for the daemon core.
    #[must_use]
    pub fn ban_list(&self) -> BanList {
        self.ledger.ban_list()
    }

    /// Whether `addr` is banned now.
    #[must_use]
    pub fn is_banned(&self, addr: IpAddr) -> bool {
        self.ledger.is_banned(addr, SystemTime::now())
    }

    /// Closes expired grants and bans (on backends without kernel timeouts) and restores our
    /// rules if they were deleted or changed. Call every few seconds.
    pub fn check_and_repair(&mut self) -> Result<Health, Error> {
        self.check_and_repair_at(SystemTime::now())
    }

    fn check_and_repair_at(&mut self, now: SystemTime) -> Result<Health, Error> {
        let expired = self.expire(now);
        let health = if self.backend.is_intact()? {
            Health::Intact
        } else {
            tracing::warn!(
                backend = self.backend.name(),
                grants = self.ledger.grant_count(),
                bans = self.ledger.ban_count(),
                "firewall rules were deleted or changed outside capyknock; restoring them"
            );
            self.backend.restore(&self.ledger, now)?;
            if !self.backend.is_intact()? {
                return Err(Error::NotIntact {
                    backend: self.backend.name(),
                });
            }
            tracing::info!(backend = self.backend.name(), "firewall rules restored");
            Health::Restored
        };
        // Only what changed is written: the worker is busy for each fsync'd file, and the
        // knocks queued behind it wait (grants expire every few seconds on a busy server;
        // bans rarely).
        if expired.grants {
            self.save();
        }
        if expired.bans {
            self.save_bans();
        }
        Ok(health)
    }

    /// Collects expired entries and, when the backend cannot expire them itself, removes them
    /// (failures are logged; the next tick does not retry, the ledger file keeps no stale
    /// entry). Returns what expired.
    fn expire(&mut self, now: SystemTime) -> ExpiredKinds {
        let backend = &mut self.backend;
        let keep_established = self.keep_established;
        let expired = self.ledger.take_expired(now, |key| {
            keep_established && !backend.expires_by_itself() && backend.in_use(key)
        });
        let kinds = ExpiredKinds {
            grants: !expired.grants.is_empty(),
            bans: !expired.bans.is_empty(),
        };
        if expired.is_empty() {
            return kinds;
        }
        if !self.backend.expires_by_itself() {
            if !expired.grants.is_empty() {
                for key in &expired.grants {
                    tracing::info!(addr = %key.addr, port = %key.port_spec(), "grant expired; closing");
                }
                if let Err(err) = self.backend.remove_grants(&expired.grants) {
                    tracing::error!(error = %ErrorChain(&err), "closing expired grants failed");
                }
            }
            for addr in &expired.bans {
                tracing::info!(%addr, "ban expired; lifting");
                if let Err(err) = self.backend.remove_ban(*addr) {
                    tracing::error!(%addr, error = %ErrorChain(&err), "lifting an expired ban failed");
                }
            }
        }
        kinds
    }

    /// Removes everything the backend created and forgets all grants and bans.
    pub fn remove_all(&mut self) -> Result<(), Error> {
        self.backend.remove_all(&self.ledger)?;
        self.ledger.clear();
        if let Some(path) = &self.ledger_file {
            persist::delete(path)?;
        }
        tracing::info!(backend = self.backend.name(), "firewall rules removed");
        Ok(())
    }

    /// Grants in force (for `status`).
    #[must_use]
    pub fn grants(&self) -> Vec<PortGrant> {
        self.ledger.grants().collect()
    }

    /// Bans in force (for `status`).
    #[must_use]
    pub fn bans(&self) -> Vec<Ban> {
        self.ledger.bans().collect()
    }

    /// Writes the ban list to `bans.json`. A failure (full disk) is logged and otherwise
    /// ignored: bans work now, only a restart would forget the new ones.
    fn save_bans(&self) {
        if let Some(path) = &self.bans_file
            && let Err(err) = bans_file::save(path, self.ledger.bans())
        {
            tracing::error!(
                error = %ErrorChain(&err),
                "cannot save the ban list; bans work now but would be lost by a restart"
            );
        }
    }

    /// Writes the ledger file, if this backend keeps one. A failure (full disk) is logged and
    /// otherwise ignored: access keeps working, only a restart would forget what to close.
    fn save(&self) {
        if let Some(path) = &self.ledger_file
            && let Err(err) = persist::save(path, self.backend.name(), &self.ledger)
        {
            tracing::error!(
                error = %ErrorChain(&err),
                "cannot save the firewall ledger; grants open now may stay open after a restart"
            );
        }
    }
}

/// What one expiry pass took out of the ledger.
#[derive(Debug, Clone, Copy)]
struct ExpiredKinds {
    grants: bool,
    bans: bool,
}

/// Reads the ledger file; a damaged one is moved aside (`.corrupt`, as every damaged state
/// file) with an error in the log, and the daemon starts with an empty ledger.
fn load_ledger(path: &Path, backend: &str, now: SystemTime) -> Result<Ledger, Error> {
    match persist::load(path, backend, now) {
        Ok(Some(ledger)) => Ok(ledger),
        Ok(None) => Ok(Ledger::new()),
        Err(err @ persist::PersistError::Corrupt { .. }) => {
            let aside = crate::private_file::move_aside(path);
            tracing::error!(
                error = %ErrorChain(&err),
                moved_to = %crate::log_fields::OptPath(aside.as_deref()),
                "ignoring the damaged firewall ledger; grants it listed will not be closed automatically"
            );
            Ok(Ledger::new())
        }
        Err(err) => Err(err.into()),
    }
}

/// The backend `config` chooses, validated, without the facade: the privileged firewall helper
/// (`server::privsep`) drives it on behalf of a facade in the unprivileged daemon.
pub fn open_backend(
    config: &FirewallConfig,
    protected: &[PortSpec],
    knock_ports: &[u16],
) -> Result<Box<dyn Backend>, Error> {
    config.validate()?;
    make_backend(config, protected, knock_ports)
}

fn make_backend(
    config: &FirewallConfig,
    protected: &[PortSpec],
    knock_ports: &[u16],
) -> Result<Box<dyn Backend>, Error> {
    make_backend_of(config.backend, config, protected, knock_ports)
}

#[cfg_attr(
    not(any(target_os = "linux", windows)),
    expect(
        clippy::only_used_in_recursion,
        reason = "only nftables and Windows Firewall protect ports by themselves; exec and none take no port list"
    )
)]
fn make_backend_of(
    kind: FirewallKind,
    config: &FirewallConfig,
    protected: &[PortSpec],
    knock_ports: &[u16],
) -> Result<Box<dyn Backend>, Error> {
    match kind {
        FirewallKind::Auto => make_backend_of(kind.resolve(), config, protected, knock_ports),
        #[cfg(target_os = "linux")]
        FirewallKind::Nftables => Ok(Box::new(nftables::NftBackend::new(
            &config.table,
            config.priority,
            protected,
            knock_ports,
        )?)),
        #[cfg(not(target_os = "linux"))]
        FirewallKind::Nftables => Err(Error::Unavailable {
            kind,
            hint: "nftables exists only on Linux; use backend = \"exec\"",
        }),
        #[cfg(windows)]
        FirewallKind::Windows => Ok(Box::new(windows::WindowsBackend::new(protected)?)),
        #[cfg(not(windows))]
        FirewallKind::Windows => Err(Error::Unavailable {
            kind,
            hint: "Windows Firewall exists only on Windows; use nftables or exec",
        }),
        FirewallKind::Exec => match &config.exec {
            Some(exec) => Ok(Box::new(exec::ExecBackend::new(exec.clone(), knock_ports))),
            None => Err(Error::NoExecConfig),
        },
        FirewallKind::None => Ok(Box::new(none::NoneBackend)),
    }
}

/// What stealth the backend of `config` leaves to the admin, if anything: a warning for the
/// log at start and for `check-config`. `knock_ports` are the ports that must be dropped (none
/// when knocks come through a UDP socket).
#[must_use]
pub fn stealth_warning(config: &FirewallConfig, knock_ports: &[u16]) -> Option<String> {
    let ports: Vec<String> = knock_ports.iter().map(|p| format!("udp/{p}")).collect();
    match config.backend.resolve() {
        FirewallKind::None => Some(format!(
            "firewall backend \"none\": capyknock changes no firewall rule, so stealth is your \
             firewall's job: drop everything to the protected ports{}",
            if ports.is_empty() {
                String::new()
            } else {
                format!(" and to the knock ports ({})", ports.join(", "))
            }
        )),
        FirewallKind::Exec
            if !ports.is_empty()
                && config
                    .exec
                    .as_ref()
                    .is_some_and(|e| e.knock_drop.is_none() && !e.knock_drop_in_ruleset) =>
        {
            Some(format!(
                "[firewall.exec] has no knock_drop: nothing makes sure UDP to the knock ports \
                 ({}) is dropped, so frames the capture does not drop reach the host's network \
                 stack (capyknock keeps a socket on them so that no ICMP answer leaves, but \
                 drop them in the firewall: add knock_drop, or set knock_drop_in_ruleset = true \
                 if your ruleset drops them; docs/FIREWALL.md)",
                ports.join(", ")
            ))
        }
        _ => None,
    }
}

/// What [`remove_installed`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Our rules were there and are gone.
    Removed,
    /// There was nothing to remove.
    NothingThere,
}

/// Removes everything capyknock created in the system firewall without a running daemon
/// (`capyknock firewall remove`): the nftables table `table` on Linux, every rule named
/// `capyknock ...` on Windows. Other tables and rules are never touched.
pub fn remove_installed(table: &str) -> Result<Removed, Error> {
    config::validate_table_name(table)?;
    #[cfg(target_os = "linux")]
    {
        Ok(if nftables::remove_table(table)? {
            Removed::Removed
        } else {
            Removed::NothingThere
        })
    }
    #[cfg(windows)]
    {
        Ok(if windows::remove_all_rules()? > 0 {
            Removed::Removed
        } else {
            Removed::NothingThere
        })
    }
    #[cfg(not(any(target_os = "linux", windows)))]
    {
        Err(Error::Unavailable {
            kind: FirewallKind::Auto,
            hint: "only nftables and Windows Firewall rules can be removed this way; run your exec `close` commands",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use super::*;

    #[test]
    fn stealth_left_to_the_admin_is_said() {
        let none = FirewallConfig {
            backend: FirewallKind::None,
            ..FirewallConfig::default()
        };
        let w = stealth_warning(&none, &[62201]).unwrap();
        assert!(
            w.contains("stealth is your firewall's job") && w.contains("udp/62201"),
            "{w}"
        );
        let exec = |drop: bool, ruleset: bool| FirewallConfig {
            backend: FirewallKind::Exec,
            exec: Some(ExecConfig {
                open: exec::Template::try_from(vec!["/bin/true".to_owned()]).unwrap(),
                close: exec::Template::try_from(vec!["/bin/true".to_owned()]).unwrap(),
                ban: None,
                unban: None,
                knock_drop: drop
                    .then(|| exec::Template::try_from(vec!["/bin/true".to_owned()]).unwrap()),
                knock_undrop: None,
                knock_drop_in_ruleset: ruleset,
                timeout: std::time::Duration::from_secs(5),
            }),
            ..FirewallConfig::default()
        };
        let w = stealth_warning(&exec(false, false), &[62201]).unwrap();
        assert!(w.contains("knock_drop"), "{w}");
        assert_eq!(stealth_warning(&exec(true, false), &[62201]), None);
        assert_eq!(stealth_warning(&exec(false, true), &[62201]), None);
        // udp capture reads the port through a socket: nothing to drop.
        assert_eq!(stealth_warning(&exec(false, false), &[]), None);
        assert_eq!(stealth_warning(&FirewallConfig::default(), &[62201]), None);
    }

    /// What the fake firewall holds, shared with the test.
    #[derive(Debug, Default)]
    struct State {
        grants: BTreeSet<GrantKey>,
        bans: BTreeSet<IpAddr>,
        intact: bool,
        restores: usize,
        fail_next: bool,
        in_use: BTreeSet<GrantKey>,
    }

    /// A timer-driven backend (like Windows or exec) recording what it is told.
    #[derive(Debug)]
    struct Fake {
        state: Arc<Mutex<State>>,
        can_ban: bool,
        atomic: bool,
    }

    fn fail() -> Error {
        Error::NoExecConfig
    }

    impl Backend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn expires_by_itself(&self) -> bool {
            false
        }
        fn persistent_ledger(&self) -> bool {
            true
        }
        fn atomic(&self) -> bool {
            self.atomic
        }
        fn add_grants(&mut self, grants: &[PortGrant], _now: SystemTime) -> Result<(), Error> {
            let mut s = self.state.lock().unwrap();
            if std::mem::take(&mut s.fail_next) {
                return Err(fail());
            }
            s.grants.extend(grants.iter().map(PortGrant::key));
            Ok(())
        }
        fn remove_grants(&mut self, keys: &[GrantKey]) -> Result<(), Error> {
            let mut s = self.state.lock().unwrap();
            for k in keys {
                s.grants.remove(k);
            }
            Ok(())
        }
        fn add_ban(&mut self, ban: &Ban, _now: SystemTime) -> Result<bool, Error> {
            let mut s = self.state.lock().unwrap();
            if std::mem::take(&mut s.fail_next) {
                return Err(fail());
            }
            if self.can_ban {
                s.bans.insert(ban.addr);
            }
            Ok(self.can_ban)
        }
        fn remove_ban(&mut self, addr: IpAddr) -> Result<(), Error> {
            self.state.lock().unwrap().bans.remove(&addr);
            Ok(())
        }
        fn is_intact(&mut self) -> Result<bool, Error> {
            Ok(self.state.lock().unwrap().intact)
        }
        fn restore(&mut self, ledger: &Ledger, _now: SystemTime) -> Result<(), Error> {
            let mut s = self.state.lock().unwrap();
            s.grants = ledger.grants().map(|g| g.key()).collect();
            s.bans = ledger.bans().map(|b| b.addr).collect();
            s.intact = true;
            s.restores += 1;
            Ok(())
        }
        fn in_use(&mut self, key: &GrantKey) -> bool {
            self.state.lock().unwrap().in_use.contains(key)
        }
        fn remove_all(&mut self, _ledger: &Ledger) -> Result<(), Error> {
            let mut s = self.state.lock().unwrap();
            s.grants.clear();
            s.bans.clear();
            Ok(())
        }
    }

    use super::model::tests::{grant, ip, t};

    fn open(
        dir: Option<&Path>,
        keep: bool,
        can_ban: bool,
        now: SystemTime,
    ) -> (Firewall, Arc<Mutex<State>>) {
        let state = Arc::new(Mutex::new(State::default()));
        let fake = Fake {
            state: state.clone(),
            can_ban,
            atomic: true,
        };
        let fw = Firewall::open_at(Box::new(fake), dir, keep, now).unwrap();
        (fw, state)
    }

    /// The facade is the one owner of the bans: it saves them (bans.json) and, after a start
    /// on an empty firewall (a reboot), applies them again and publishes them.
    #[test]
    fn bans_are_saved_and_come_back_after_a_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let addr = ip("203.0.113.9");
        {
            let (mut fw, _) = open(Some(dir.path()), false, true, t(0));
            fw.ban_at(addr, None, t(0)).unwrap();
            fw.ban_at(ip("203.0.113.10"), Some(t(60)), t(0)).unwrap();
            assert!(fw.unban(ip("203.0.113.10")).unwrap());
            assert!(
                !fw.unban(ip("203.0.113.10")).unwrap(),
                "not banned any more"
            );
        }
        // A fresh, empty firewall: the saved ban is applied and published again.
        let (fw, state) = open(Some(dir.path()), false, true, t(1));
        assert!(state.lock().unwrap().bans.contains(&addr));
        assert!(fw.ban_list().is_banned(addr, t(1)));
        assert_eq!(fw.ban_list().len(), 1);
    }

    /// Regression (knock latency): every expiry pass that closed a grant rewrote bans.json
    /// too (temporary file, fsync, rename), keeping the worker busy while knocks queued.
    #[cfg(unix)]
    #[test]
    fn an_expired_grant_does_not_rewrite_the_ban_list_an_expired_ban_does() {
        use std::{fs, os::unix::fs::MetadataExt as _};
        let dir = tempfile::tempdir().unwrap();
        let bans = dir.path().join(bans_file::FILE);
        let (mut fw, _) = open(Some(dir.path()), false, true, t(0));
        fw.ban_at(ip("203.0.113.9"), Some(t(100)), t(0)).unwrap();
        fw.grant_at(&[grant("192.0.2.1", 22, t(10))], t(0)).unwrap();
        let inode = fs::metadata(&bans).unwrap().ino();
        fw.check_and_repair_at(t(10)).unwrap();
        assert!(fw.grants().is_empty());
        assert_eq!(fs::metadata(&bans).unwrap().ino(), inode, "rewritten");
        fw.check_and_repair_at(t(100)).unwrap();
        assert!(fw.bans().is_empty());
        assert_ne!(fs::metadata(&bans).unwrap().ino(), inode, "not rewritten");
    }

    #[test]
    fn timer_backends_close_expired_grants_on_the_tick() {
        let (mut fw, state) = open(None, false, true, t(0));
        fw.grant_at(
            &[grant("192.0.2.1", 22, t(10)), grant("192.0.2.2", 22, t(30))],
            t(0),
        )
        .unwrap();
        assert_eq!(state.lock().unwrap().grants.len(), 2);
        assert_eq!(fw.check_and_repair_at(t(5)).unwrap(), Health::Intact);
        assert_eq!(state.lock().unwrap().grants.len(), 2);
        fw.check_and_repair_at(t(10)).unwrap();
        let left: Vec<IpAddr> = state
            .lock()
            .unwrap()
            .grants
            .iter()
            .map(|k| k.addr)
            .collect();
        assert_eq!(left, vec![ip("192.0.2.2")]);
        assert_eq!(fw.grants().len(), 1);
    }

    #[test]
    fn keep_established_holds_an_expired_grant_while_in_use() {
        let (mut fw, state) = open(None, true, true, t(0));
        let g = grant("192.0.2.1", 22, t(10));
        fw.grant_at(&[g], t(0)).unwrap();
        state.lock().unwrap().in_use.insert(g.key());
        fw.check_and_repair_at(t(20)).unwrap();
        assert_eq!(state.lock().unwrap().grants.len(), 1, "kept while in use");
        state.lock().unwrap().in_use.clear();
        fw.check_and_repair_at(t(25)).unwrap();
        assert!(state.lock().unwrap().grants.is_empty(), "closed once idle");
    }

    #[test]
    fn missing_rules_are_restored_from_the_ledger() {
        let (mut fw, state) = open(None, false, true, t(0));
        fw.grant_at(&[grant("192.0.2.1", 22, t(60))], t(0)).unwrap();
        fw.ban_at(ip("192.0.2.9"), None, t(0)).unwrap();
        {
            let mut s = state.lock().unwrap();
            s.grants.clear();
            s.bans.clear();
            s.intact = false;
        }
        assert_eq!(fw.check_and_repair_at(t(1)).unwrap(), Health::Restored);
        let s = state.lock().unwrap();
        assert_eq!(s.grants.len(), 1);
        assert_eq!(s.bans.len(), 1);
        assert_eq!(s.restores, 2, "once at open, once on repair");
    }

    #[test]
    fn a_refused_change_is_rolled_back_on_atomic_backends() {
        let (mut fw, state) = open(None, false, true, t(0));
        fw.grant_at(&[grant("192.0.2.1", 22, t(60))], t(0)).unwrap();
        state.lock().unwrap().fail_next = true;
        assert!(
            fw.grant_at(
                &[
                    grant("192.0.2.1", 22, t(120)),
                    grant("192.0.2.2", 22, t(60))
                ],
                t(1)
            )
            .is_err()
        );
        let grants = fw.grants();
        assert_eq!(
            grants,
            vec![grant("192.0.2.1", 22, t(60))],
            "ledger rolled back"
        );
        state.lock().unwrap().fail_next = true;
        assert!(fw.ban_at(ip("192.0.2.9"), None, t(1)).is_err());
        assert!(fw.bans().is_empty(), "failed ban not recorded");

        // A non-atomic backend may have applied part of it: keep the grants so they get closed.
        let state = Arc::new(Mutex::new(State::default()));
        let fake = Fake {
            state: state.clone(),
            can_ban: true,
            atomic: false,
        };
        let mut fw = Firewall::open_at(Box::new(fake), None, false, t(0)).unwrap();
        state.lock().unwrap().fail_next = true;
        assert!(fw.grant_at(&[grant("192.0.2.1", 22, t(60))], t(0)).is_err());
        assert_eq!(fw.grants().len(), 1, "kept for closing");
        fw.check_and_repair_at(t(60)).unwrap();
        assert!(fw.grants().is_empty());
    }

    #[test]
    fn without_native_bans_a_ban_closes_grants() {
        let (mut fw, state) = open(None, false, false, t(0));
        fw.grant_at(
            &[
                grant("192.0.2.1", 22, t(60)),
                grant("192.0.2.1", 443, t(60)),
            ],
            t(0),
        )
        .unwrap();
        fw.ban_at(ip("192.0.2.1"), Some(t(30)), t(1)).unwrap();
        assert!(state.lock().unwrap().grants.is_empty());
        assert!(
            fw.grant_at(&[grant("192.0.2.1", 22, t(60))], t(2))
                .unwrap()
                .applied
                .is_empty()
        );
        // The ban ends on the tick; grants work again.
        fw.check_and_repair_at(t(30)).unwrap();
        assert_eq!(
            fw.grant_at(&[grant("192.0.2.1", 22, t(90))], t(31))
                .unwrap()
                .applied
                .len(),
            1
        );
    }

    #[test]
    fn restart_closes_what_expired_while_down() {
        let dir = tempfile::tempdir().unwrap();
        let (mut fw, state) = open(Some(dir.path()), false, true, t(0));
        fw.grant_at(
            &[
                grant("192.0.2.1", 22, t(10)),
                grant("192.0.2.2", 22, t(100)),
            ],
            t(0),
        )
        .unwrap();
        fw.ban_at(ip("192.0.2.9"), Some(t(20)), t(0)).unwrap();
        drop(fw);
        // The "firewall" still holds everything while the daemon is down.
        let held = std::mem::take(&mut *state.lock().unwrap());

        let state = Arc::new(Mutex::new(State {
            grants: held.grants,
            bans: held.bans,
            ..State::default()
        }));
        let fake = Fake {
            state: state.clone(),
            can_ban: true,
            atomic: false,
        };
        let fw = Firewall::open_at(Box::new(fake), Some(dir.path()), false, t(50)).unwrap();
        let s = state.lock().unwrap();
        assert_eq!(
            s.grants.iter().map(|k| k.addr).collect::<Vec<_>>(),
            vec![ip("192.0.2.2")],
            "the expired grant was closed, the live one kept"
        );
        assert!(s.bans.is_empty(), "the expired ban was lifted");
        assert_eq!(fw.grants().len(), 1);
    }

    #[test]
    fn a_damaged_ledger_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("firewall-fake.json"), b"{not json").unwrap();
        let (fw, _) = open(Some(dir.path()), false, true, t(0));
        assert!(fw.grants().is_empty());
        assert!(dir.path().join("firewall-fake.json.corrupt").exists());
    }

    #[test]
    fn exec_without_a_section_and_foreign_platform_backends_are_refused() {
        let cfg = FirewallConfig {
            backend: FirewallKind::Exec,
            ..FirewallConfig::default()
        };
        assert!(matches!(
            Firewall::open(&cfg, &[], &[], Path::new("/nonexistent")),
            Err(Error::NoExecConfig)
        ));
        #[cfg(not(windows))]
        {
            let cfg = FirewallConfig {
                backend: FirewallKind::Windows,
                ..FirewallConfig::default()
            };
            assert!(matches!(
                Firewall::open(&cfg, &[], &[], Path::new("/nonexistent")),
                Err(Error::Unavailable { .. })
            ));
        }
        let cfg = FirewallConfig {
            backend: FirewallKind::None,
            ..FirewallConfig::default()
        };
        let mut fw = Firewall::open(&cfg, &[], &[], Path::new("/nonexistent")).unwrap();
        assert_eq!(fw.name(), "none");
        fw.grant(&[grant(
            "192.0.2.1",
            22,
            SystemTime::now() + Duration::from_secs(5),
        )])
        .unwrap();
        assert_eq!(fw.grants().len(), 1);
        fw.remove_all().unwrap();
        assert!(fw.grants().is_empty());
    }
}
