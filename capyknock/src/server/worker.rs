//! The effects worker: one dedicated thread that owns the firewall and the state directory, so
//! the knock path never waits for a disk write, an fsync, a netlink batch or an exec command.
//!
//! The daemon core sends [`Effect`]s through a bounded channel without waiting. The worker takes
//! everything queued at once and, in this order: makes every new use of a code durable in one
//! flush (`server::replay_store`), saves the newest ban list, then applies the firewall changes
//! in order, grants that arrive together in one batch. A grant whose use could not be made
//! durable is not applied (fail closed): no crash can then bring back a knock that opened
//! something. The worker tells the core through a shared flag
//! whether the replay state is durable, so the core refuses new knocks while it is not.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    control::Response,
    metrics::Metrics,
    replay_store::ReplayStore,
    state::StateDir,
    status::{BanStatus, GrantStatus, Status},
};
use crate::{
    firewall::{self, BanList, ErrorChain, Firewall, FirewallConfig},
    ports::PortSpec,
    protocol::{
        keys::UserId,
        replay::{ReplayState, Used},
        verify,
    },
};

/// Most effects taken from the queue in one round.
const MAX_BATCH: usize = 1024;

/// Something the worker must do.
#[derive(Debug)]
pub enum Effect {
    /// Open a verified knock's ports, once its use of the code is durable.
    Grant {
        /// The verifier's grant.
        grant: verify::Access,
        /// The use the verifier charged for it.
        used: Used,
        /// When the core took the knock off the capture (for the latency metric).
        received: Instant,
        /// The server time (Unix seconds) the verifier checked the knock against.
        verified_at: u64,
    },
    /// Make a use durable that opens nothing (a knock refused by policy after its code was
    /// used up).
    RecordUse {
        /// The use.
        used: Used,
        /// The server time (Unix seconds) the verifier checked the knock against.
        verified_at: u64,
    },
    /// The replay state could not be written: write all of it again (rebuilding the file if
    /// needed) to become durable again.
    RecoverReplay(Box<ReplayState>),
    /// Ban `addr` (until `until`, or until unbanned) and revoke its grants.
    Ban {
        /// The address.
        addr: IpAddr,
        /// When the ban ends.
        until: Option<SystemTime>,
        /// Where to answer the control client.
        reply: oneshot::Sender<Response>,
    },
    /// Lift a ban.
    Unban {
        /// The address.
        addr: IpAddr,
        /// Where to answer the control client.
        reply: oneshot::Sender<Response>,
    },
    /// Close the grants of these users now (removed from the config with
    /// `revoke_removed_users = true`).
    RevokeUsers(Vec<UserId>),
    /// Protect these ports from now on (a reload gave a user a port no one had): the firewall
    /// is opened again with them, keeping every grant and ban.
    Protect(Vec<PortSpec>),
    /// Close expired grants, restore deleted rules.
    Repair,
    /// Keep the replay state's durable horizon ahead of the clock (sent every second), so the
    /// next knock does not wait for the disk ([`ReplayStore::keep_ahead`]).
    KeepReplayAhead,
    /// Fill in the grants and answer a `status` request.
    Status {
        /// Everything the core knows.
        status: Box<Status>,
        /// Where to answer.
        reply: oneshot::Sender<Response>,
    },
    /// Stop (the replay state and the bans are always saved already).
    Shutdown,
}

/// The worker's state.
#[derive(Debug)]
pub struct Worker {
    firewall: Firewall,
    state: StateDir,
    replay: Option<ReplayStore>,
    durable: Arc<AtomicBool>,
    /// The bans, published for the core after every change (the firewall owns them).
    bans: watch::Sender<BanList>,
    firewall_errors: u64,
    reopen: Option<Reopen>,
    /// Grants, bans, latency and errors for the metrics endpoint, when it is on.
    metrics: Option<Metrics>,
}

/// How the firewall was opened, so it can be opened again with more protected ports.
#[derive(Debug, Clone)]
pub struct Reopen {
    /// The `[firewall]` settings in force.
    pub config: FirewallConfig,
    /// UDP ports the firewall drops (the knock ports, or none in udp capture mode).
    pub knock_drop: Vec<u16>,
    /// The state directory (ledger of timer-driven backends).
    pub state_dir: PathBuf,
    /// Who opens the backend when the daemon cannot itself (the privileged firewall helper,
    /// `server::privsep`); `None`: the worker opens it.
    pub helper: Option<OpenWith>,
}

/// Opens a firewall backend for new protected ports somewhere else (the firewall helper).
#[derive(Clone)]
pub struct OpenWith(Arc<OpenBackend>);

/// What [`OpenWith`] calls.
type OpenBackend =
    dyn Fn(&[PortSpec]) -> Result<Box<dyn firewall::Backend>, firewall::Error> + Send + Sync;

impl OpenWith {
    /// Wraps `open`.
    pub fn new(
        open: impl Fn(&[PortSpec]) -> Result<Box<dyn firewall::Backend>, firewall::Error>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self(Arc::new(open))
    }
}

impl std::fmt::Debug for OpenWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenWith(..)")
    }
}

impl Worker {
    /// A worker driving `firewall`, saving into `state` and making uses durable in `replay`
    /// (`None` when it could not be opened: grants are then refused until
    /// [`Effect::RecoverReplay`] succeeds). `durable` is shared with the core: true while the
    /// replay state can be written.
    #[must_use]
    pub fn new(
        firewall: Firewall,
        state: StateDir,
        replay: Option<ReplayStore>,
        durable: Arc<AtomicBool>,
    ) -> Self {
        durable.store(replay.is_some(), Ordering::Release);
        let (bans, _) = watch::channel(firewall.ban_list());
        Self {
            firewall,
            state,
            replay,
            durable,
            bans,
            firewall_errors: 0,
            reopen: None,
            metrics: None,
        }
    }

    /// The bans as the core sees them: a snapshot, replaced after every change.
    #[must_use]
    pub fn subscribe_bans(&self) -> watch::Receiver<BanList> {
        self.bans.subscribe()
    }

    /// Lets [`Effect::Protect`] reopen the firewall as it was opened.
    #[must_use]
    pub fn with_reopen(mut self, reopen: Reopen) -> Self {
        self.reopen = Some(reopen);
        self
    }

    /// Counts grants, bans, latency and errors into `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Option<Metrics>) -> Self {
        if let Some(m) = &metrics {
            m.set_bans_active(self.firewall.ban_list().len());
            m.set_grants_active(self.active_grants());
        }
        self.metrics = metrics;
        self
    }

    /// Runs until the channel closes or a [`Effect::Shutdown`] arrives. Blocking: run it on its
    /// own thread. Returns the firewall (the daemon drops it without removing anything, so
    /// grants run out by themselves).
    #[must_use]
    pub fn run(mut self, mut rx: mpsc::Receiver<Effect>) -> Firewall {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            if self.process(batch) {
                break;
            }
        }
        self.firewall
    }

    /// Handles one batch; true when it held a shutdown.
    fn process(&mut self, batch: Vec<Effect>) -> bool {
        let batch_started = Instant::now();
        // How long the oldest knock of the batch waited for the worker.
        let waited = batch
            .iter()
            .filter_map(|e| match e {
                Effect::Grant { received, .. } => Some(batch_started.duration_since(*received)),
                _ => None,
            })
            .max()
            .unwrap_or_default();
        // Persist first: a rewrite of the replay state if it was failing, then every use of
        // the batch in one flush.
        for effect in &batch {
            if let Effect::RecoverReplay(state) = effect {
                self.recover_replay(state);
            }
        }
        let mut charged: Vec<Used> = Vec::new();
        let mut verified_at = 0;
        for e in &batch {
            if let Effect::Grant {
                used,
                verified_at: at,
                ..
            }
            | Effect::RecordUse {
                used,
                verified_at: at,
            } = e
            {
                charged.push(*used);
                verified_at = verified_at.max(*at);
            }
        }
        let save_started = Instant::now();
        let uses_durable = self.save_uses(&charged, verified_at);
        let save_time = save_started.elapsed();

        let mut shutdown = false;
        let mut grants: Vec<(verify::Access, Instant)> = Vec::new();
        for effect in batch {
            if !matches!(effect, Effect::Grant { .. }) && !grants.is_empty() {
                self.grant(&std::mem::take(&mut grants));
            }
            match effect {
                Effect::Grant {
                    grant, received, ..
                } if uses_durable => grants.push((grant, received)),
                Effect::Grant { grant, .. } => {
                    tracing::error!(
                        nickname = %grant.nickname,
                        addr = %grant.addr,
                        "knock verified but NOT granted: its use of the code cannot be saved, \
                         and granting it could let a replay in after a restart"
                    );
                }
                Effect::RecordUse { .. } | Effect::RecoverReplay(_) => {}
                Effect::KeepReplayAhead => self.keep_replay_ahead(),
                // The core sees the change before the client hears it is done.
                Effect::Ban { addr, until, reply } => {
                    let response = self.ban(addr, until);
                    self.publish_bans();
                    let _ = reply.send(response);
                }
                Effect::Unban { addr, reply } => {
                    let response = self.unban(addr);
                    self.publish_bans();
                    let _ = reply.send(response);
                }
                Effect::RevokeUsers(users) => self.revoke_users(&users),
                Effect::Protect(ports) => self.protect(&ports),
                Effect::Repair => {
                    self.repair();
                    self.publish_bans();
                }
                Effect::Status { status, reply } => {
                    let _ = reply.send(Response::status(self.fill_status(*status)));
                }
                Effect::Shutdown => {
                    self.close_replay();
                    shutdown = true;
                }
            }
        }
        if !grants.is_empty() {
            self.grant(&grants);
        }
        if let Some(m) = &self.metrics {
            m.set_firewall_errors(self.firewall_errors);
        }
        if !charged.is_empty() {
            tracing::debug!(
                uses = charged.len(),
                waited_us = waited.as_micros(),
                save_us = save_time.as_micros(),
                total_us = batch_started.elapsed().as_micros(),
                "effects applied"
            );
        }
        shutdown
    }

    /// Records `uses` (verified at `verified_at`) so that no restart or reboot can bring them
    /// back ([`ReplayStore::write`]); whether that worked (trivially, when there are none).
    fn save_uses(&mut self, uses: &[Used], verified_at: u64) -> bool {
        if uses.is_empty() {
            return true;
        }
        let result = match &mut self.replay {
            Some(store) => store
                .write(uses, verified_at)
                .map_err(|e| ErrorChain(&e).to_string()),
            None => Err("the replay state file could not be opened at start".to_owned()),
        };
        self.set_durable(result)
    }

    /// Renews the replay state's durable horizon if it runs short; a failure fails closed at
    /// once (the core then has the state rewritten), as a failed knock write would.
    fn keep_replay_ahead(&mut self) {
        if !self.durable.load(Ordering::Acquire) {
            return;
        }
        if let Some(store) = self.replay.as_mut()
            && let Err(err) = store.keep_ahead(unix_now())
        {
            self.set_durable(Err(ErrorChain(&err).to_string()));
        }
    }

    /// A clean stop of the replay state: flushed, horizon cleared (no fence after a reboot).
    fn close_replay(&mut self) {
        if let Some(store) = self.replay.as_mut()
            && let Err(err) = store.close()
        {
            tracing::warn!(
                error = %ErrorChain(&err),
                "cannot close the replay state cleanly: after a reboot, knocks are refused for \
                 about a minute"
            );
        }
    }

    fn recover_replay(&mut self, state: &ReplayState) {
        let uses: Vec<Used> = state.iter().copied().collect();
        let now = unix_now();
        let result = if let Some(store) = self.replay.as_mut() {
            store
                .write_fence(state.not_before(), state.floor_step())
                .and_then(|()| store.write(&uses, now))
        } else {
            ReplayStore::create(self.state.path(), state, now).map(|store| {
                self.replay = Some(store);
            })
        };
        if self.set_durable(result.map_err(|e| ErrorChain(&e).to_string())) {
            tracing::warn!("the replay state can be saved again: new knocks are accepted again");
        }
    }

    /// Records whether the replay state is durable, logging a failure loudly.
    fn set_durable(&mut self, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => {
                self.durable.store(true, Ordering::Release);
                true
            }
            Err(error) => {
                if self.durable.swap(false, Ordering::AcqRel) {
                    tracing::error!(
                        %error,
                        "CANNOT SAVE THE REPLAY STATE: new knocks are refused until it can be \
                         saved again (fix the state directory: space, permissions, read-only \
                         mount); current grants and bans keep working"
                    );
                } else {
                    tracing::debug!(%error, "the replay state still cannot be saved");
                }
                false
            }
        }
    }

    fn grant(&mut self, grants: &[(verify::Access, Instant)]) {
        let now = SystemTime::now();
        let mut fw = Vec::new();
        for (g, _) in grants {
            let until = now + g.duration;
            for p in &g.ports {
                fw.push(firewall::PortGrant {
                    addr: g.addr,
                    protocol: p.protocol,
                    port: p.port,
                    until,
                    owner: Some(firewall::Owner::new(g.user, &g.nickname)),
                });
            }
        }
        match self.firewall.grant(&fw) {
            Ok(_) => {
                if let Some(m) = &self.metrics {
                    for (_, received) in grants {
                        m.granted(received.elapsed());
                    }
                    m.set_grants_active(self.active_grants());
                }
            }
            Err(err) => {
                self.firewall_errors += 1;
                tracing::error!(
                    error = %ErrorChain(&err),
                    grants = fw.len(),
                    "the firewall refused verified knocks; their ports stay closed"
                );
            }
        }
    }

    /// Grants whose time has not run out (the ledger keeps expired ones until the next
    /// repair closes them).
    fn active_grants(&self) -> usize {
        let now = SystemTime::now();
        self.firewall
            .grants()
            .iter()
            .filter(|g| g.until > now)
            .count()
    }

    /// Tells the core which addresses are banned (it checks them before verifying a knock),
    /// and the metrics how many bans and grants there are.
    fn publish_bans(&self) {
        let bans = self.firewall.ban_list();
        if let Some(m) = &self.metrics {
            m.set_bans_active(bans.len());
            m.set_grants_active(self.active_grants());
        }
        self.bans.send_if_modified(|old| {
            let changed = *old != bans;
            if changed {
                *old = bans;
            }
            changed
        });
    }

    fn unban(&mut self, addr: IpAddr) -> Response {
        match self.firewall.unban(addr) {
            Ok(true) => {
                tracing::info!(target: super::logging::KNOCK_TARGET, %addr, "address unbanned");
                Response::message(format!("unbanned {addr}"))
            }
            Ok(false) => Response::error(format!("{addr} is not banned")),
            Err(err) => {
                self.firewall_errors += 1;
                tracing::error!(%addr, error = %ErrorChain(&err), "firewall unban failed");
                Response::error(format!("cannot unban {addr}: {}", ErrorChain(&err)))
            }
        }
    }

    fn ban(&mut self, addr: IpAddr, until: Option<SystemTime>) -> Response {
        let addr = addr.to_canonical();
        if let Err(err) = firewall::model::canonical_addr(addr) {
            return Response::error(err.to_string());
        }
        let revoked = match self.firewall.revoke(addr) {
            Ok(n) => n,
            Err(err) => {
                self.firewall_errors += 1;
                tracing::error!(%addr, error = %ErrorChain(&err), "revoking a banned address's grants failed");
                0
            }
        };
        let how_long = until
            .and_then(|u| u.duration_since(SystemTime::now()).ok())
            .map_or_else(
                || "until unbanned".to_owned(),
                |d| format!("for {}", humantime::format_duration(round_secs(d))),
            );
        match self.firewall.ban(addr, until) {
            Ok(()) => {
                if let Some(m) = &self.metrics {
                    m.banned();
                }
                Response::message(format!(
                    "banned {addr} {how_long} ({revoked} grant{} revoked)",
                    if revoked == 1 { "" } else { "s" }
                ))
            }
            Err(firewall::Error::Model(err)) => Response::error(err.to_string()),
            Err(err) => {
                self.firewall_errors += 1;
                tracing::error!(%addr, error = %ErrorChain(&err), "firewall ban failed");
                Response::error(format!(
                    "{addr}: its grants are revoked, but the firewall refused the ban: {}",
                    ErrorChain(&err)
                ))
            }
        }
    }

    fn revoke_users(&mut self, users: &[UserId]) {
        match self.firewall.revoke_owned_by(users) {
            Ok(n) => tracing::info!(
                users = users.len(),
                grants = n,
                "removed users' access revoked"
            ),
            Err(err) => {
                self.firewall_errors += 1;
                tracing::error!(error = %ErrorChain(&err), "revoking removed users' access failed");
            }
        }
    }

    fn protect(&mut self, ports: &[PortSpec]) {
        let Some(r) = &self.reopen else {
            tracing::warn!("cannot change the protected ports of this firewall without a restart");
            return;
        };
        let opened = match &r.helper {
            Some(open) => (open.0)(ports).and_then(|backend| {
                Firewall::with_backend(backend, Some(&r.state_dir), r.config.keep_established)
            }),
            None => Firewall::open(&r.config, ports, &r.knock_drop, &r.state_dir),
        };
        match opened {
            Ok(fw) => {
                // The old handle is dropped as it is: the rules now belong to the new one.
                self.firewall = fw;
                let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
                tracing::info!(ports = %ports.join(","), "firewall now protects these ports");
            }
            Err(err) => {
                self.firewall_errors += 1;
                tracing::error!(
                    error = %ErrorChain(&err),
                    "cannot protect the new ports; they stay unprotected until a restart"
                );
            }
        }
    }

    fn repair(&mut self) {
        if let Err(err) = self.firewall.check_and_repair() {
            self.firewall_errors += 1;
            tracing::error!(error = %ErrorChain(&err), "firewall check failed");
        }
    }

    fn fill_status(&self, mut status: Status) -> Status {
        let now = SystemTime::now();
        // One line per (address, user), with its ports.
        let mut lines: BTreeMap<(IpAddr, String), (Vec<String>, Duration)> = BTreeMap::new();
        for g in self.firewall.grants() {
            let Some(left) = g.remaining(now) else {
                continue;
            };
            let nickname = g
                .owner
                .map_or_else(|| "-".to_owned(), |o| o.nickname().to_owned());
            let entry = lines
                .entry((g.addr, nickname))
                .or_insert((Vec::new(), left));
            entry.0.push(g.key().port_spec().to_string());
            entry.1 = entry.1.max(left);
        }
        status.grants = lines
            .into_iter()
            .map(|((addr, nickname), (ports, left))| GrantStatus {
                nickname,
                addr,
                ports,
                expires_in_secs: round_secs(left).as_secs(),
            })
            .collect();
        status.bans = self
            .firewall
            .bans()
            .into_iter()
            .filter_map(|b| {
                let left = b.remaining(now)?;
                Some(BanStatus {
                    addr: b.addr,
                    expires_in_secs: left.map(|d| round_secs(d).as_secs()),
                })
            })
            .collect();
        status.verifier.firewall_errors = self.firewall_errors;
        status
    }
}

/// Rounds up to whole seconds, for display.
/// The server's clock in Unix seconds (0 before the epoch).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn round_secs(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{
        firewall::{Backend, Ban, Ledger},
        server::status::{CaptureStatus, FirewallStatus, VerifierStatus},
    };

    /// A backend that records calls.
    #[derive(Debug, Default, Clone)]
    struct Fake(Arc<Mutex<Vec<String>>>);

    impl Backend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn expires_by_itself(&self) -> bool {
            true
        }
        fn persistent_ledger(&self) -> bool {
            false
        }
        fn add_grants(
            &mut self,
            grants: &[firewall::PortGrant],
            _: SystemTime,
        ) -> Result<(), firewall::Error> {
            self.0
                .lock()
                .unwrap()
                .push(format!("grant {}", grants.len()));
            Ok(())
        }
        fn remove_grants(&mut self, keys: &[firewall::GrantKey]) -> Result<(), firewall::Error> {
            self.0
                .lock()
                .unwrap()
                .push(format!("remove {}", keys.len()));
            Ok(())
        }
        fn add_ban(&mut self, ban: &Ban, _: SystemTime) -> Result<bool, firewall::Error> {
            self.0.lock().unwrap().push(format!("ban {}", ban.addr));
            Ok(true)
        }
        fn remove_ban(&mut self, addr: IpAddr) -> Result<(), firewall::Error> {
            self.0.lock().unwrap().push(format!("unban {addr}"));
            Ok(())
        }
        fn restore(&mut self, _: &Ledger, _: SystemTime) -> Result<(), firewall::Error> {
            Ok(())
        }
        fn remove_all(&mut self, _: &Ledger) -> Result<(), firewall::Error> {
            Ok(())
        }
    }

    fn grant(nick: &str, n: u8, addr: &str) -> verify::Access {
        verify::Access {
            user: UserId([n; 16]),
            nickname: nick.into(),
            addr: addr.parse().unwrap(),
            ports: vec![PortSpec::tcp(22), PortSpec::udp(51820)],
            duration: Duration::from_mins(5),
        }
    }

    fn used(n: u8, step: u64) -> Used {
        Used {
            user: UserId([n; 16]),
            step,
            packet_id: crate::protocol::payload::PacketId([n; 16]),
        }
    }

    #[test]
    fn grants_whose_use_cannot_be_saved_are_not_applied() {
        let fake = Fake::default();
        let calls = fake.0.clone();
        let fw = Firewall::with_backend(Box::new(fake), None, false).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let durable = Arc::new(AtomicBool::new(true));
        // No replay file could be opened (a read-only state directory at start).
        let mut worker = Worker::new(fw, state, None, Arc::clone(&durable));
        assert!(!durable.load(Ordering::Acquire));
        worker.process(vec![Effect::Grant {
            grant: grant("alice", 1, "192.0.2.1"),
            used: used(1, 100),
            received: Instant::now(),
            verified_at: 0,
        }]);
        assert!(
            calls.lock().unwrap().is_empty(),
            "granted without a durable use"
        );
        assert!(!durable.load(Ordering::Acquire));

        // Once the file can be written again, grants are applied again.
        let mut replay = ReplayState::safe_start(0);
        replay.record(
            UserId([1; 16]),
            100,
            crate::protocol::payload::PacketId([1; 16]),
        );
        worker.process(vec![Effect::RecoverReplay(Box::new(replay))]);
        assert!(durable.load(Ordering::Acquire));
        worker.process(vec![Effect::Grant {
            grant: grant("bob", 2, "192.0.2.2"),
            used: used(2, 100),
            received: Instant::now(),
            verified_at: 0,
        }]);
        assert_eq!(calls.lock().unwrap().clone(), vec!["grant 2"]);
        let (saved, _, _) = ReplayStore::load(tmp.path(), 0);
        assert_eq!(saved.last_used(&UserId([1; 16])).map(|u| u.step), Some(100));
        assert_eq!(saved.last_used(&UserId([2; 16])).map(|u| u.step), Some(100));
    }

    #[test]
    fn grants_bans_and_latency_are_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path()).unwrap();
        let store = ReplayStore::create(tmp.path(), &ReplayState::safe_start(0), 0).unwrap();
        let fw = Firewall::with_backend(Box::new(Fake::default()), None, false).unwrap();
        let durable = Arc::new(AtomicBool::new(true));
        let metrics = crate::server::metrics::Metrics::new();
        let mut worker =
            Worker::new(fw, state, Some(store), durable).with_metrics(Some(metrics.clone()));
        let received = Instant::now()
            .checked_sub(Duration::from_millis(30))
            .unwrap();
        worker.process(vec![
            Effect::Grant {
                grant: grant("alice", 1, "192.0.2.1"),
                used: used(1, 100),
                received,
                verified_at: 0,
            },
            Effect::Grant {
                grant: grant("bob", 2, "192.0.2.2"),
                used: used(2, 100),
                received,
                verified_at: 0,
            },
        ]);
        let (reply, _answer) = oneshot::channel();
        worker.process(vec![Effect::Ban {
            addr: "192.0.2.1".parse().unwrap(),
            until: None,
            reply,
        }]);
        let text = metrics.render();
        for line in [
            "\ncapyknock_grants_total 2\n",
            "\ncapyknock_knock_to_firewall_seconds_count 2\n",
            // Both took at least the 30 ms since `received`.
            "\ncapyknock_knock_to_firewall_seconds_bucket{le=\"0.025\"} 0\n",
            "\ncapyknock_bans_total 1\n",
            "\ncapyknock_bans_active 1\n",
            // bob's two ports; alice's went with her ban.
            "\ncapyknock_grants_active 2\n",
            "\ncapyknock_firewall_errors_total 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        // A grant whose time has run out is not active, although the ledger still holds it
        // until the next repair.
        let mut brief = grant("carol", 3, "192.0.2.3");
        brief.duration = Duration::ZERO;
        worker.process(vec![Effect::Grant {
            grant: brief,
            used: used(3, 100),
            received,
            verified_at: 0,
        }]);
        let text = metrics.render();
        assert!(text.contains("\ncapyknock_grants_active 2\n"), "{text}");
        assert!(text.contains("\ncapyknock_grants_total 3\n"), "{text}");
    }

    fn status() -> Box<Status> {
        Box::new(Status {
            version: String::new(),
            uptime_secs: 0,
            config: String::new(),
            config_loaded_at: 0,
            knock_ports: vec![],
            users: 0,
            capture: CaptureStatus {
                mode: String::new(),
                interfaces: vec![],
                detail: String::new(),
                follows: String::new(),
            },
            firewall: FirewallStatus {
                backend: String::new(),
            },
            prefilter: BTreeMap::new(),
            verifier: VerifierStatus::default(),
            grants: vec![],
            bans: vec![],
            log_lines_suppressed: 0,
            cluster: None,
        })
    }

    #[test]
    fn batches_grants_saves_first_and_answers() {
        let dir = std::env::temp_dir().join(format!("ck-worker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        let fake = Fake::default();
        let calls = fake.0.clone();
        let fw = Firewall::with_backend(Box::new(fake), Some(&dir), false).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let store = ReplayStore::create(&dir, &ReplayState::safe_start(1_700_000_000), 0).unwrap();
        let durable = Arc::new(AtomicBool::new(false));

        tx.blocking_send(Effect::Grant {
            grant: grant("alice", 1, "192.0.2.1"),
            used: used(1, 100),
            received: Instant::now(),
            verified_at: 0,
        })
        .unwrap();
        tx.blocking_send(Effect::Grant {
            grant: grant("bob", 2, "192.0.2.2"),
            used: used(2, 100),
            received: Instant::now(),
            verified_at: 0,
        })
        .unwrap();
        let (tx_reply, answer) = oneshot::channel();
        tx.blocking_send(Effect::Status {
            status: status(),
            reply: tx_reply,
        })
        .unwrap();
        // Started after the queue is filled: all of it is one batch, the grants one change.
        let worker = Worker::new(fw, state, Some(store), Arc::clone(&durable));
        let bans = worker.subscribe_bans();
        let thread = std::thread::spawn(move || worker.run(rx));
        let s = answer.blocking_recv().unwrap().status.unwrap();
        assert_eq!(s.grants.len(), 2, "{s:?}");
        assert_eq!(s.grants[0].nickname, "alice");
        assert_eq!(s.grants[0].ports, vec!["tcp/22", "udp/51820"]);
        assert!(s.grants[0].expires_in_secs > 290 && s.grants[0].expires_in_secs <= 300);
        assert!(durable.load(Ordering::Acquire));
        // Both uses are durable before the grants were applied.
        let (saved, _, _) = ReplayStore::load(&dir, 0);
        assert_eq!(saved.len(), 2);

        // A ban revokes the address's grants, is saved, and reaches the core's snapshot.
        let (tx_reply, answer) = oneshot::channel();
        tx.blocking_send(Effect::Ban {
            addr: "192.0.2.1".parse().unwrap(),
            until: None,
            reply: tx_reply,
        })
        .unwrap();
        let r = answer.blocking_recv().unwrap();
        assert_eq!(
            r.message.as_deref(),
            Some("banned 192.0.2.1 until unbanned (2 grants revoked)")
        );
        assert!(
            bans.borrow()
                .is_banned("192.0.2.1".parse().unwrap(), SystemTime::now())
        );
        // Unbanning an address that is not banned says so.
        let (tx_reply, answer) = oneshot::channel();
        tx.blocking_send(Effect::Unban {
            addr: "192.0.2.99".parse().unwrap(),
            reply: tx_reply,
        })
        .unwrap();
        let r = answer.blocking_recv().unwrap();
        assert!(!r.ok && r.error.unwrap().contains("not banned"));
        let (tx_reply, answer) = oneshot::channel();
        tx.blocking_send(Effect::Status {
            status: status(),
            reply: tx_reply,
        })
        .unwrap();
        let s = answer.blocking_recv().unwrap().status.unwrap();
        assert_eq!(s.grants.len(), 1);
        assert_eq!(s.grants[0].nickname, "bob");

        // Removing bob's user revokes his grant.
        tx.blocking_send(Effect::RevokeUsers(vec![UserId([2; 16])]))
            .unwrap();
        tx.blocking_send(Effect::Shutdown).unwrap();
        let fw = thread.join().unwrap();
        assert!(fw.grants().is_empty());
        let calls = calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            vec![
                "grant 4",
                "remove 2",
                "ban 192.0.2.1",
                "unban 192.0.2.99",
                "remove 2"
            ],
            "{calls:?}"
        );
        let saved = firewall::bans_file::load(&firewall::bans_file::path(&dir));
        assert_eq!(saved.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
