//! The etcd side of fleet mode: one client per etcd member, connected in the background with
//! backoff (the daemon starts and captures whether or not etcd answers), a health probe, and the
//! claim transaction that makes a knock one-time across the fleet.
//!
//! Requests go to the member that answered last; when it fails (down, or cut off from the
//! quorum: requests carry "require leader"), the next member is tried within the same timeout.
//! (One balanced gRPC channel over all members was tried first: it kept sending every other
//! request to a dead member, which failed them.) A retry after a request that may have reached
//! etcd can only make the claim look taken: it fails closed.
//!
//! The claim (docs/FLEET.md, "Why a replay cannot slip through two nodes"): one etcd
//! transaction, `if create_revision(step key) == 0 and create_revision(packet key) == 0 then put
//! both (value: this node, under the claim lease)`. etcd runs transactions one at a time in its
//! linearizable log, so of two nodes claiming the same knock at once exactly one sees both keys
//! absent; the other's compare fails and it refuses the knock.
//!
//! Leases: one lease of twice the claim lifetime ([`super::keys::claim_lifetime`]) serves every
//! claim made during its first half, so each claim key lives at least one lifetime, and a claim
//! costs one round trip (a new lease is granted once per lifetime, by the health probe ahead of
//! time, so no claim waits for it).

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, PutOptions, TlsOptions, Txn,
    TxnOp,
};

use super::{
    config::ClusterSettings,
    keys::{self, claim_lifetime},
    watch_health::WatchTracker,
};
use crate::{
    error_chain::ErrorChain,
    protocol::replay::Used,
    server::status::{MemberStatus, WatchStatus},
};

/// How often the health probe asks etcd for a linearizable read.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// The health probe grants the next claim lease this long before the current one stops
/// taking new claims.
const LEASE_AHEAD: Duration = Duration::from_secs(5);
/// The member list (and which member leads) is read at the first probe that reaches the
/// store, then every this many.
const MEMBER_LIST_EVERY: u64 = 10;
/// The most members `status` lists (etcd clusters have 3, 5 or 7).
const MAX_MEMBERS_SHOWN: usize = 16;
/// First and longest wait between connection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// Most knocks accepted on local state alone (`on_store_failure = "local"`) remembered for
/// claiming once the store returns; older ones are dropped first.
pub const MAX_UNCLAIMED: usize = 65_536;

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A TLS file could not be read.
    #[error("cannot read {what} {path}")]
    TlsFile {
        /// `ca`, `cert` or `key`.
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The client certificate's key was refused (others may read or replace it) or could not
    /// be read.
    #[error("the etcd client key (key in [cluster])")]
    TlsKey(#[source] crate::private_file::PrivateFileError),
    /// The seal key of the users from the store could not be read.
    #[error("users from the store (users_from_store in [cluster])")]
    SealKey(#[source] super::users::SealKeyError),
    /// No connection yet, or the health probe found the store unreachable.
    #[error("the fleet store (etcd) is unreachable")]
    Unreachable,
    /// The store did not answer in time.
    #[error("the fleet store (etcd) did not answer within {0:?}")]
    Timeout(Duration),
    /// etcd answered with an error.
    #[error("etcd")]
    Etcd(#[source] etcd_client::Error),
}

/// The result of a claim the store answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This node holds the claim now: the knock may open.
    Claimed,
    /// Another claim (on this node before a restart, or on another node) came first.
    Taken,
}

/// The etcd client and what it keeps between claims. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    prefix: String,
    endpoints: Vec<String>,
    options: ConnectOptions,
    timeout: Duration,
    lifetime: Duration,
    /// One client per endpoint, in `endpoints` order, once connected.
    /// One per endpoint, each set once that member's client is connected.
    clients: Vec<OnceLock<Client>>,
    /// The member that answered last.
    preferred: AtomicUsize,
    healthy: AtomicBool,
    /// What TLS this node uses, to explain errors that look like a refused certificate.
    tls: TlsUse,
    /// The fleet watches, for `status`.
    watches: Mutex<Vec<Arc<WatchTracker>>>,
    /// The etcd members listed last, for `status`.
    members: Mutex<Vec<MemberStatus>>,
    lease: tokio::sync::Mutex<Option<Lease>>,
    unclaimed: Mutex<Vec<(Used, Instant)>>,
    /// Bans and unbans made here that could not be written to the store, oldest first.
    unwritten_bans: Mutex<Vec<BanChange>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node", &self.node)
            .field("endpoints", &self.endpoints)
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A ban or unban made on this node while the store could not take it.
#[derive(Debug, Clone, Copy)]
pub enum BanChange {
    /// Banned until then (`None`: until unbanned).
    Ban(std::net::IpAddr, Option<std::time::SystemTime>),
    /// Unbanned.
    Unban(std::net::IpAddr),
}

/// A lease claims are attached to, and until when new claims may use it.
#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
    usable_until: Instant,
}

/// The longest client key file read: a PEM private key is a few kilobytes at most.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Reads the etcd client key as the config is read: refused when group or others may read it,
/// when someone other than us or root owns it, or when others may replace it (the key lets
/// its holder write the fleet's claims, bans and grants).
fn read_key(path: &std::path::Path) -> Result<String, StoreError> {
    crate::private_file::read_private(path, "etcd client key", MAX_KEY_FILE)
        .map_err(StoreError::TlsKey)?
        .ok_or_else(|| {
            StoreError::TlsKey(crate::private_file::PrivateFileError::Read {
                what: "etcd client key",
                path: path.to_owned(),
                source: std::io::ErrorKind::NotFound.into(),
            })
        })
}

impl Store {
    /// Reads the TLS files (now, before the daemon drops its privileges) and starts connecting
    /// and probing in the background. Must run inside the tokio runtime.
    pub fn start(settings: &ClusterSettings, freshness: Duration) -> Result<Self, StoreError> {
        // A dead member must leave time to try the others within one claim's timeout.
        let members = u32::try_from(settings.endpoints.len()).unwrap_or(1).max(1);
        let mut options = ConnectOptions::new()
            .with_connect_timeout((settings.timeout / (members + 1)).max(Duration::from_millis(50)))
            .with_timeout(settings.timeout.max(Duration::from_secs(1)))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(1))
            // A member that lost quorum refuses the request instead of serving it.
            .with_require_leader(true);
        if let Some(tls) = &settings.tls {
            let read = |what, path: &std::path::Path| {
                std::fs::read(path).map_err(|source| StoreError::TlsFile {
                    what,
                    path: path.display().to_string(),
                    source,
                })
            };
            let mut config =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca", &tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(read("cert", cert)?, read_key(key)?));
            }
            options = options.with_tls(config);
        }
        if let Some(auth) = &settings.auth {
            // etcd's tokens end (TTL, or an etcd restart forgets them): log in again then.
            options = options
                .with_user(auth.user.clone(), auth.password.as_str())
                .with_auto_token_refresh(true);
        }
        let store = Self {
            inner: Arc::new(Inner {
                node: settings.node.clone(),
                prefix: settings.prefix.clone(),
                endpoints: settings.endpoints.clone(),
                options,
                timeout: settings.timeout,
                lifetime: claim_lifetime(freshness),
                clients: settings.endpoints.iter().map(|_| OnceLock::new()).collect(),
                preferred: AtomicUsize::new(0),
                healthy: AtomicBool::new(false),
                tls: TlsUse::of(settings),
                watches: Mutex::new(Vec::new()),
                members: Mutex::new(Vec::new()),
                lease: tokio::sync::Mutex::new(None),
                unclaimed: Mutex::new(Vec::new()),
                unwritten_bans: Mutex::new(Vec::new()),
            }),
        };
        tokio::spawn(store.clone().maintain());
        Ok(store)
    }

    /// A new fleet watch's progress tracker, shown by `status` (see [`WatchTracker`]).
    #[must_use]
    pub fn track_watch(&self, name: &'static str) -> Arc<WatchTracker> {
        let tracker = WatchTracker::new(name);
        if let Ok(mut watches) = self.inner.watches.lock() {
            watches.push(Arc::clone(&tracker));
        }
        tracker
    }

    /// Every fleet watch and how far behind the store it is.
    #[must_use]
    pub fn watch_status(&self) -> Vec<WatchStatus> {
        let now = tokio::time::Instant::now();
        self.inner
            .watches
            .lock()
            .map(|w| w.iter().map(|t| t.status(now)).collect())
            .unwrap_or_default()
    }

    /// The etcd members the store listed last.
    #[must_use]
    pub fn members_seen(&self) -> Vec<MemberStatus> {
        self.inner
            .members
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Reads the store's member list (a few names and URLs; capped all the same), which member
    /// each endpoint reaches and which member leads, then sends requests to the leader first
    /// when an endpoint reaches it.
    async fn list_members(&self) {
        let Some(mut client) = self.preferred_client() else {
            return;
        };
        let wait = self.inner.timeout.max(Duration::from_millis(300));
        let listed = tokio::time::timeout(wait, client.member_list()).await;
        let reached = self.members_reached(wait).await;
        match listed {
            Ok(Ok(resp)) => {
                let members: Vec<MemberStatus> = resp
                    .members()
                    .iter()
                    .take(MAX_MEMBERS_SHOWN)
                    .map(|m| {
                        let endpoint = reached.endpoint_of(m.id());
                        MemberStatus {
                            name: m.name().to_owned(),
                            client_urls: m.client_urls().iter().take(4).cloned().collect(),
                            leader: reached.leader != 0 && m.id() == reached.leader,
                            endpoint: endpoint
                                .and_then(|idx| self.inner.endpoints.get(idx))
                                .cloned(),
                        }
                    })
                    .collect();
                if let Some(idx) = reached.endpoint_of(reached.leader) {
                    self.prefer_leader(idx);
                }
                if let Ok(mut seen) = self.inner.members.lock() {
                    *seen = members;
                }
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %ErrorChain(&err), "cannot list the etcd members");
            }
            Err(_) => tracing::debug!("the etcd member list did not come in time"),
        }
    }

    /// Asks every connected endpoint, at once, which member answers there and which member
    /// leads (etcd's status call: no Raft round). An endpoint that does not answer within
    /// `wait` is left out.
    async fn members_reached(&self, wait: Duration) -> Reached {
        let mut asks = tokio::task::JoinSet::new();
        for idx in 0..self.inner.endpoints.len() {
            if let Some(mut client) = self.client_at(idx) {
                asks.spawn(async move {
                    let status = tokio::time::timeout(wait, client.status()).await;
                    (idx, status)
                });
            }
        }
        let mut reached = Reached::default();
        while let Some(done) = asks.join_next().await {
            let Ok((idx, Ok(Ok(status)))) = done else {
                continue;
            };
            if let Some(header) = status.header() {
                reached.members.push((header.member_id(), idx));
            }
            if reached.leader == 0 {
                reached.leader = status.leader();
            }
        }
        reached
    }

    /// Sends requests to endpoint `idx` first: it reaches the leader. A write through a
    /// follower waits for two more hops between members (the follower forwards it to the
    /// leader, and learns of the commit from it), so claims through the leader are faster
    /// (docs/FLEET.md, "Performance"). Failover is unchanged: a member that does not answer is
    /// passed over, whichever it is.
    fn prefer_leader(&self, idx: usize) {
        let was = self.inner.preferred.swap(idx, Ordering::Relaxed);
        if was != idx {
            tracing::info!(
                endpoint = self.inner.endpoints.get(idx).map_or("", String::as_str),
                "fleet store: requests go to the etcd leader first"
            );
        }
    }

    /// Whether the last health probe reached a store with a leader.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }

    /// This node's name.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The endpoints, in config order.
    #[must_use]
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The endpoint requests go to first (the one that answered last).
    #[must_use]
    pub fn answering(&self) -> &str {
        self.inner
            .endpoints
            .get(self.inner.preferred.load(Ordering::Relaxed))
            .map_or("", String::as_str)
    }

    /// The key prefix (ends with `/`).
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The client of the member that answered last, once connected.
    #[must_use]
    pub fn preferred_client(&self) -> Option<Client> {
        let first = self.inner.preferred.load(Ordering::Relaxed);
        (0..self.members()).find_map(|i| self.client_at((first + i) % self.members()))
    }

    fn members(&self) -> usize {
        self.inner.clients.len().max(1)
    }

    /// Member `idx`'s client, once connected.
    fn client_at(&self, idx: usize) -> Option<Client> {
        self.inner.clients.get(idx)?.get().cloned()
    }

    /// Runs `f` with the preferred member's client, then the others', until one succeeds,
    /// within the configured timeout.
    pub async fn with_member<T, F>(&self, f: impl Fn(Client) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.inner.timeout;
        let each_member = async {
            let first = self.inner.preferred.load(Ordering::Relaxed);
            let mut last = StoreError::Unreachable;
            for i in 0..self.members() {
                let idx = (first + i) % self.members();
                let Some(client) = self.client_at(idx) else {
                    continue;
                };
                match f(client).await {
                    Ok(v) => {
                        self.inner.preferred.store(idx, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(err) => last = StoreError::Etcd(err),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(timeout, each_member).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }

    /// Claims `used` for this node, within the configured timeout. Fails at once while the
    /// health probe finds the store unreachable, so a down store costs a knock no wait.
    pub async fn claim(&self, used: &Used) -> Result<Claim, StoreError> {
        if !self.is_healthy() {
            return Err(StoreError::Unreachable);
        }
        let timeout = self.inner.timeout;
        let each_member = async {
            let first = self.inner.preferred.load(Ordering::Relaxed);
            let mut last = StoreError::Unreachable;
            for i in 0..self.members() {
                let idx = (first + i) % self.members();
                let Some(client) = self.client_at(idx) else {
                    continue;
                };
                match self.claim_with(client, used).await {
                    Ok(claim) => {
                        self.inner.preferred.store(idx, Ordering::Relaxed);
                        return Ok(claim);
                    }
                    Err(err) => last = err,
                }
            }
            Err(last)
        };
        match tokio::time::timeout(timeout, each_member).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }

    async fn claim_with(&self, mut client: Client, used: &Used) -> Result<Claim, StoreError> {
        let step = keys::step_claim(&self.inner.prefix, used);
        let packet = keys::packet_claim(&self.inner.prefix, used);
        for attempt in 0..2 {
            let lease = self.lease(&mut client).await?;
            let put = || Some(PutOptions::new().with_lease(lease));
            let txn = Txn::new()
                .when([
                    Compare::create_revision(step.clone(), CompareOp::Equal, 0),
                    Compare::create_revision(packet.clone(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(step.clone(), self.inner.node.clone(), put()),
                    TxnOp::put(packet.clone(), self.inner.node.clone(), put()),
                ]);
            match client.txn(txn).await {
                Ok(resp) if resp.succeeded() => return Ok(Claim::Claimed),
                Ok(_) => return Ok(Claim::Taken),
                Err(err) if attempt == 0 && lease_gone(&err) => {
                    // The lease expired or was revoked under us (etcd restored from a backup,
                    // a long pause): take a new one and try once more.
                    *self.inner.lease.lock().await = None;
                }
                Err(err) => return Err(StoreError::Etcd(err)),
            }
        }
        Err(StoreError::Unreachable)
    }

    /// The lease new claims go under, granting a new one when the current one is past its
    /// first half.
    async fn lease(&self, client: &mut Client) -> Result<i64, StoreError> {
        self.lease_for(client, Duration::ZERO).await
    }

    /// The lease, granting a new one when the current one is usable for less than `ahead`.
    async fn lease_for(&self, client: &mut Client, ahead: Duration) -> Result<i64, StoreError> {
        let mut current = self.inner.lease.lock().await;
        if let Some(lease) = *current
            && Instant::now() + ahead < lease.usable_until
        {
            return Ok(lease.id);
        }
        let ttl = self.inner.lifetime * 2;
        let started = Instant::now();
        let granted = client
            .lease_grant(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX), None)
            .await
            .map_err(StoreError::Etcd)?;
        let lease = Lease {
            id: granted.id(),
            usable_until: started + ttl.saturating_sub(self.inner.lifetime),
        };
        *current = Some(lease);
        Ok(lease.id)
    }

    /// Remembers a knock accepted without a claim (`on_store_failure = "local"`), to claim it
    /// when the store returns.
    pub fn remember_unclaimed(&self, used: Used) {
        if let Ok(mut list) = self.inner.unclaimed.lock() {
            if list.len() >= MAX_UNCLAIMED {
                list.remove(0);
            }
            list.push((used, Instant::now()));
        }
    }

    /// Remembers a ban change the store could not take, to write it when the store returns.
    pub fn remember_unwritten_ban(&self, change: BanChange) {
        if let Ok(mut list) = self.inner.unwritten_bans.lock() {
            if list.len() >= MAX_UNCLAIMED {
                list.remove(0);
            }
            list.push(change);
        }
    }

    /// Writes the ban changes made here while the store was away, in order.
    async fn write_unwritten_bans(&self) {
        let pending: Vec<BanChange> = match self.inner.unwritten_bans.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(_) => return,
        };
        let mut written = 0u64;
        for change in pending {
            let result = match change {
                BanChange::Ban(addr, None) => self.put_ban(addr, None).await,
                BanChange::Ban(addr, Some(until)) => {
                    match until.duration_since(std::time::SystemTime::now()) {
                        Ok(left) if !left.is_zero() => self.put_ban(addr, Some(left)).await,
                        _ => continue,
                    }
                }
                BanChange::Unban(addr) => self.delete_ban(addr).await,
            };
            match result {
                Ok(()) => written += 1,
                Err(err) => {
                    tracing::warn!(error = %ErrorChain(&err), "could not write a ban made while the store was away; trying again later");
                    self.remember_unwritten_ban(change);
                }
            }
        }
        if written > 0 {
            tracing::info!(
                written,
                "bans made while the fleet store was away are now written to it"
            );
        }
    }

    /// Connects (with backoff), then probes the store's health forever; claims what was
    /// accepted locally while it was away once it is back.
    async fn maintain(self) {
        // Each member is connected on its own, so one that is down at start (with etcd
        // authentication the connection logs in at once) does not hold back the others.
        for idx in 0..self.inner.endpoints.len() {
            let store = self.clone();
            tokio::spawn(async move {
                let Some(endpoint) = store.inner.endpoints.get(idx).cloned() else {
                    return;
                };
                let client = store.connect(&endpoint).await;
                if let Some(slot) = store.inner.clients.get(idx) {
                    let _ = slot.set(client);
                }
            });
        }
        // Probe once a member is connected (the connection tasks log their own failures).
        while (0..self.members()).all(|i| self.client_at(i).is_none()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut interval = tokio::time::interval(PROBE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = String::new();
        let mut probes: u64 = 0;
        loop {
            interval.tick().await;
            let error = self.probe().await;
            if error.is_none()
                && (probes.is_multiple_of(MEMBER_LIST_EVERY) || self.members_seen().is_empty())
            {
                self.list_members().await;
            }
            probes = probes.wrapping_add(1);
            if error.is_none()
                && let Some(mut client) = self.preferred_client()
            {
                // Claims find a lease ready: none waits for a lease grant.
                let _ = self.lease_for(&mut client, LEASE_AHEAD).await;
            }
            let was = self.inner.healthy.swap(error.is_none(), Ordering::AcqRel);
            match (was, error) {
                (false, None) => {
                    tracing::info!(
                        node = %self.inner.node,
                        endpoints = %self.inner.endpoints.join(","),
                        "fleet store (etcd) reachable: knocks are claimed fleet-wide"
                    );
                    last_error.clear();
                    self.reconcile().await;
                    self.write_unwritten_bans().await;
                }
                (true, Some(error)) => {
                    tracing::error!(
                        %error,
                        hint = self.inner.tls.hint(&error).unwrap_or(""),
                        endpoints = %self.inner.endpoints.join(","),
                        "FLEET STORE (etcd) UNREACHABLE: new knocks follow on_store_failure \
                         until it returns; bans and current grants keep working"
                    );
                    last_error = error;
                }
                (false, Some(error)) if error != last_error => {
                    tracing::warn!(
                        %error,
                        hint = self.inner.tls.hint(&error).unwrap_or(""),
                        "fleet store (etcd) still unreachable"
                    );
                    last_error = error;
                }
                _ => {}
            }
        }
    }

    /// A linearizable read (it needs a quorum) through the preferred member, then the others;
    /// the first that answers becomes the preferred one. `None`: healthy.
    async fn probe(&self) -> Option<String> {
        let first = self.inner.preferred.load(Ordering::Relaxed);
        let mut errors = Vec::new();
        for i in 0..self.members() {
            let idx = (first + i) % self.members();
            let endpoint = self.inner.endpoints.get(idx).map_or("?", String::as_str);
            let Some(client) = self.client_at(idx) else {
                errors.push(format!("{endpoint}: not connected"));
                continue;
            };
            let probe = tokio::time::timeout(
                self.inner.timeout.max(Duration::from_millis(300)),
                client
                    .clone()
                    .get(format!("{}health", self.inner.prefix), None),
            )
            .await;
            match probe {
                Ok(Ok(_)) => {
                    self.inner.preferred.store(idx, Ordering::Relaxed);
                    return None;
                }
                Ok(Err(err)) => errors.push(format!("{endpoint}: {}", ErrorChain(&err))),
                Err(_) => errors.push(format!("{endpoint}: no answer in time")),
            }
        }
        Some(errors.join("; "))
    }

    async fn connect(&self, endpoint: &str) -> Client {
        let mut wait = BACKOFF.0;
        loop {
            match Client::connect([endpoint], Some(self.inner.options.clone())).await {
                Ok(client) => return client,
                Err(err) => {
                    let error = ErrorChain(&err).to_string();
                    tracing::warn!(
                        %error,
                        hint = self.inner.tls.hint(&error).unwrap_or(""),
                        retry_in = ?wait,
                        "cannot connect to the fleet store (etcd); retrying"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BACKOFF.1);
                }
            }
        }
    }

    /// Claims the knocks accepted on local state while the store was away, so a replay of one
    /// to another node is refused from now on. One that another node claimed meanwhile was
    /// accepted twice: logged.
    async fn reconcile(&self) {
        let pending: Vec<(Used, Instant)> = match self.inner.unclaimed.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(_) => return,
        };
        let (mut claimed, mut taken) = (0u64, 0u64);
        for (used, at) in pending {
            if at.elapsed() > self.inner.lifetime {
                continue;
            }
            match self.claim(&used).await {
                Ok(Claim::Claimed) => claimed += 1,
                Ok(Claim::Taken) => {
                    taken += 1;
                    tracing::warn!(
                        user = %used.user,
                        step = used.step,
                        "a knock accepted here while the fleet store was away was also \
                         accepted by another node (on_store_failure = local)"
                    );
                }
                Err(err) => {
                    tracing::warn!(error = %ErrorChain(&err), "could not claim a knock accepted while the store was away");
                    self.remember_unclaimed(used);
                }
            }
        }
        if claimed + taken > 0 {
            tracing::info!(
                claimed,
                taken,
                "knocks accepted while the fleet store was away are now claimed"
            );
        }
    }
}

/// Whether this node talks TLS to etcd, and with a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsUse {
    None,
    ServerOnly,
    ClientCertificate,
}

/// Words in the error text of a failed TLS handshake or of a connection etcd closed right
/// after one (which is how a refused client certificate usually shows: etcd sends its alert
/// and closes; the client often sees only the broken pipe or a cancelled request).
const TLS_SYMPTOMS: [&str; 7] = [
    "certificate",
    "alert",
    "handshake",
    "broken pipe",
    "cancel",
    "unknownissuer",
    "tls",
];

impl TlsUse {
    fn of(settings: &ClusterSettings) -> Self {
        match &settings.tls {
            None => Self::None,
            Some(tls) if tls.identity.is_some() => Self::ClientCertificate,
            Some(_) => Self::ServerOnly,
        }
    }

    /// What to check when `error` looks like a TLS refusal; `None` when it does not (a member
    /// that is down, a timeout) or when TLS is not in use.
    fn hint(self, error: &str) -> Option<&'static str> {
        let lower = error.to_ascii_lowercase();
        if self == Self::None || !TLS_SYMPTOMS.iter().any(|w| lower.contains(w)) {
            return None;
        }
        Some(match self {
            Self::ClientCertificate => {
                "this looks like a refused TLS handshake: check that [cluster] cert was signed by                  the CA etcd trusts (its --trusted-ca-file), that key belongs to cert, and that                  [cluster] ca signed etcd's own certificate, which must name the endpoint's host                  or IP address"
            }
            _ => {
                "this looks like a refused TLS handshake: check that [cluster] ca signed etcd's                  certificate, which must name the endpoint's host or IP address, and whether                  etcd requires client certificates (--client-cert-auth: then set cert and key)"
            }
        })
    }
}

/// Which member each endpoint reached, and the leader, by etcd member id.
#[derive(Debug, Default)]
struct Reached {
    /// (member id, endpoint index), one per endpoint that answered.
    members: Vec<(u64, usize)>,
    /// The leader's member id; 0: none known.
    leader: u64,
}

impl Reached {
    /// The endpoint that reaches member `id` (the first, if several do).
    fn endpoint_of(&self, id: u64) -> Option<usize> {
        if id == 0 {
            return None;
        }
        self.members
            .iter()
            .filter(|(member, _)| *member == id)
            .map(|(_, idx)| *idx)
            .min()
    }
}

/// Whether `err` says the lease is gone.
fn lease_gone(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_endpoint_of_a_member_is_the_one_that_reached_it() {
        let reached = Reached {
            members: vec![(0xb, 2), (0xa, 1), (0xb, 0)],
            leader: 0xb,
        };
        assert_eq!(reached.endpoint_of(reached.leader), Some(0));
        assert_eq!(reached.endpoint_of(0xa), Some(1));
        // A member no endpoint reached, and "no leader known".
        assert_eq!(reached.endpoint_of(0xc), None);
        assert_eq!(reached.endpoint_of(0), None);
    }

    #[test]
    fn tls_refusals_get_a_hint_and_other_errors_do_not() {
        let refused = "https://10.0.0.1:2379: transport error: broken pipe";
        let alert = "received fatal alert: BadCertificate";
        let down = "https://10.0.0.1:2379: transport error: Connection refused (os error 111)";
        let client = TlsUse::ClientCertificate;
        assert!(client.hint(refused).unwrap().contains("[cluster] cert"));
        assert!(client.hint(alert).is_some());
        assert_eq!(
            client.hint(down),
            None,
            "a member that is down is not a TLS problem"
        );
        assert!(
            TlsUse::ServerOnly
                .hint("invalid peer certificate: UnknownIssuer")
                .unwrap()
                .contains("--client-cert-auth")
        );
        assert_eq!(TlsUse::None.hint(alert), None, "no TLS, no TLS hint");
    }

    #[test]
    fn client_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("etcd-client.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_key(&key).unwrap_err().to_string();
        assert_eq!(err, "the etcd client key (key in [cluster])");
        let chain = ErrorChain(&read_key(&key).unwrap_err()).to_string();
        assert!(chain.contains("chmod 600"), "{chain}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key(&key).unwrap().starts_with("-----BEGIN"));
        let missing = read_key(&dir.path().join("none.key")).unwrap_err();
        assert!(ErrorChain(&missing).to_string().contains("none.key"));
    }
}
