//! Fleet mode in the daemon: a knock that passed every local check (including the local replay
//! state, the first filter, which costs no round trip) is claimed in etcd on a task of its own
//! before its grant goes to the worker. The core never waits for it: capture and verification
//! go on while claims are in flight.
//!
//! Outcomes: claimed -> "knock accepted" and the grant; claimed before (by any node, or by this
//! one before a restart) -> `knock rejected reason=replayed_in_fleet`; store unreachable ->
//! `on_store_failure`: `refuse` logs `knock rejected reason=store_unavailable`, `local` accepts
//! on local state with a loud error line and claims the knock when the store returns. In every
//! case the use is also recorded in the local replay state (the worker makes it durable).

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Semaphore, mpsc, watch};

use super::{
    bans::BanSync,
    config::{ClusterSettings, OnStoreFailure},
    grants::{LocalUsers, set_local_users, sync_groups},
    store::{BanChange, Claim, Store, StoreError},
    user_sync::{self, StoreUsers},
    users::SealKey,
};
use crate::{
    error_chain::ErrorChain,
    protocol::{replay::Used, users::User, verify},
    server::{logging, metrics::Metrics, status::ClusterStatus, worker::Effect},
};

/// Most claims in flight at once; beyond that a knock is treated as if the store were
/// unreachable (valid knocks are rate-limited per user long before this).
pub const MAX_IN_FLIGHT: usize = 1024;
/// The rejection reason of a knock another claim came first for.
pub const REPLAYED_IN_FLEET: &str = "replayed_in_fleet";
/// The rejection reason of a knock refused because the store is unreachable.
pub const STORE_UNAVAILABLE: &str = "store_unavailable";

/// The daemon's handle on the fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    store: Store,
    bans: Option<BanSync>,
    groups: Vec<String>,
    users: LocalUsers,
    grants_caught_up: Arc<AtomicBool>,
    /// Users from the store (`users_from_store`): the seal key and the published set.
    store_users: Option<(SealKey, watch::Sender<StoreUsers>)>,
    users_caught_up: Arc<AtomicBool>,
    policy: OnStoreFailure,
    in_flight: Arc<Semaphore>,
    counters: Arc<Counters>,
}

/// What fleet mode did, for status and tests.
#[derive(Debug, Default)]
pub struct Counters {
    /// Knocks claimed fleet-wide.
    pub claimed: AtomicU64,
    /// Knocks refused because another claim came first.
    pub replayed: AtomicU64,
    /// Knocks refused because the store was unreachable (`refuse`).
    pub refused_store_down: AtomicU64,
    /// Knocks accepted on local state alone (`local`).
    pub accepted_locally: AtomicU64,
}

/// A verified knock waiting for its claim.
#[derive(Debug)]
pub struct Pending {
    /// The verifier's grant.
    pub grant: verify::Access,
    /// The use it charged.
    pub used: Used,
    /// When the core took it off the capture.
    pub received: Instant,
    /// Where it came from.
    pub src: IpAddr,
    /// The user's group (`scope = "group:NAME"`), or `None` (`scope = "node"`).
    pub scope: Option<String>,
    /// The server time (Unix seconds) the verifier checked it against.
    pub verified_at: u64,
}

impl Fleet {
    /// Reads the seal key when users come from the store, and starts the store client (see
    /// [`Store::start`]).
    pub fn start(settings: &ClusterSettings, freshness: Duration) -> Result<Self, StoreError> {
        let seal_key = settings
            .seal_key
            .as_deref()
            .map(SealKey::read)
            .transpose()
            .map_err(StoreError::SealKey)?;
        let store = Store::start(settings, freshness)?;
        tracing::info!(
            node = %settings.node,
            groups = %settings.groups.join(","),
            endpoints = %settings.endpoints.join(","),
            on_store_failure = settings.on_store_failure.as_str(),
            "fleet mode: knocks are claimed in etcd before they open"
        );
        Ok(Self {
            store,
            bans: None,
            groups: settings.groups.clone(),
            users: LocalUsers::default(),
            grants_caught_up: Arc::new(AtomicBool::new(false)),
            store_users: seal_key.map(|k| (k, watch::channel(StoreUsers::default()).0)),
            users_caught_up: Arc::new(AtomicBool::new(false)),
            policy: settings.on_store_failure,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            counters: Arc::new(Counters::default()),
        })
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The users from the store as they change (`users_from_store`), for the daemon's core.
    #[must_use]
    pub fn store_users(&self) -> Option<watch::Receiver<StoreUsers>> {
        self.store_users.as_ref().map(|(_, tx)| tx.subscribe())
    }

    /// The users configured here (group grants are applied only for them, and only for their
    /// ports); call at start and after every reload.
    pub fn set_users(&self, users: &[User]) {
        set_local_users(&self.users, users);
    }

    /// Starts applying the fleet's bans and this node's groups' grants here (through
    /// `effects`, the worker's queue) and waits up to `within` for the first catch-up;
    /// whether it was applied. `local`: this host's own addresses, never banned.
    pub async fn start_sync(
        &mut self,
        effects: mpsc::Sender<Effect>,
        local: Vec<IpAddr>,
        within: Duration,
    ) -> bool {
        tokio::spawn(sync_groups(
            self.store.clone(),
            self.groups.clone(),
            Arc::clone(&self.users),
            effects.clone(),
            Arc::clone(&self.grants_caught_up),
        ));
        match &self.store_users {
            Some((key, tx)) => user_sync::start(
                self.store.clone(),
                key.clone(),
                tx.clone(),
                Arc::clone(&self.users_caught_up),
            ),
            None => self.users_caught_up.store(true, Ordering::Release),
        }
        let sync = BanSync::start(self.store.clone(), effects, local);
        let mut caught_up = sync.wait_caught_up(within).await;
        let started = tokio::time::Instant::now();
        // Ready means claims work too: wait for the first health probe to reach the store.
        while caught_up
            && !(self.grants_caught_up.load(Ordering::Acquire)
                && self.users_caught_up.load(Ordering::Acquire)
                && self.store.is_healthy())
        {
            if started.elapsed() >= within {
                caught_up = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !caught_up && self.store_users.is_some() {
            tracing::error!(
                waited = ?within,
                "USERS FROM THE FLEET STORE NOT LOADED (store unreachable?): starting with the \
                 config file's users only, and this node's own bans; the store's users, bans \
                 and group grants are applied as soon as it answers"
            );
        } else if !caught_up {
            tracing::warn!(
                waited = ?within,
                "fleet bans and group grants not caught up yet (store unreachable?): starting \
                 with this node's own; the fleet's are applied once the store answers"
            );
        }
        self.bans = Some(sync);
        caught_up
    }

    /// Writes a ban made on this node (CLI, control socket, fail2ban) to the fleet.
    pub fn publish_ban(&self, addr: IpAddr, duration: Option<Duration>) {
        let store = self.store.clone();
        tokio::spawn(async move {
            let until = duration.map(|d| std::time::SystemTime::now() + d);
            if let Err(err) = store.put_ban(addr, duration).await {
                tracing::error!(%addr, error = %ErrorChain(&err), "ban applied on this node; the fleet store cannot take it now: it is written when the store returns");
                store.remember_unwritten_ban(BanChange::Ban(addr, until));
            }
        });
    }

    /// Removes a ban from the fleet (unbanned on this node).
    pub fn publish_unban(&self, addr: IpAddr) {
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(err) = store.delete_ban(addr).await {
                tracing::error!(%addr, error = %ErrorChain(&err), "unban applied on this node; the fleet store cannot take it now: it is written when the store returns");
                store.remember_unwritten_ban(BanChange::Unban(addr));
            }
        });
    }

    /// What `status` shows.
    #[must_use]
    pub fn status(&self) -> ClusterStatus {
        let c = &self.counters;
        ClusterStatus {
            node: self.store.node().to_owned(),
            store_healthy: self.store.is_healthy(),
            endpoints: self.store.endpoints().to_vec(),
            answering: if self.store.is_healthy() {
                self.store.answering().to_owned()
            } else {
                String::new()
            },
            on_store_failure: self.policy.as_str().to_owned(),
            claimed: c.claimed.load(Ordering::Relaxed),
            replayed_in_fleet: c.replayed.load(Ordering::Relaxed),
            refused_store_down: c.refused_store_down.load(Ordering::Relaxed),
            accepted_locally: c.accepted_locally.load(Ordering::Relaxed),
            members: self.store.members_seen(),
            watches: self.store.watch_status(),
        }
    }

    /// The counters.
    #[must_use]
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Claims `knock` on a task of its own, then hands the worker its grant (or only its use).
    pub fn claim_then_grant(
        &self,
        knock: Pending,
        effects: mpsc::Sender<Effect>,
        metrics: Option<Metrics>,
    ) {
        let permit = Arc::clone(&self.in_flight).try_acquire_owned().ok();
        let fleet = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = match &permit {
                Some(_) => fleet.store.claim(&knock.used).await,
                None => Err(StoreError::Unreachable),
            };
            let store_time = started.elapsed();
            drop(permit);
            if matches!(outcome, Ok(Claim::Claimed)) {
                // The knock's time in the fleet path, by stage (docs/FLEET.md, "Performance").
                tracing::debug!(
                    claim_ms = knock.received.elapsed().as_secs_f64() * 1e3,
                    before_ms = started.duration_since(knock.received).as_secs_f64() * 1e3,
                    store_ms = store_time.as_secs_f64() * 1e3,
                    "claimed"
                );
            }
            let share = match (&outcome, &knock.scope) {
                (Ok(Claim::Claimed), Some(group)) => {
                    Some((group.clone(), knock.grant.clone(), knock.used))
                }
                _ => None,
            };
            let effect = fleet.decide(knock, outcome, metrics.as_ref());
            // The worker's queue is bounded; waiting here delays only this knock.
            let _ = effects.send(effect).await;
            if let Some((group, grant, used)) = share
                && let Err(err) = fleet.store.put_group_grant(&group, &grant, &used).await
            {
                tracing::error!(
                    nickname = %grant.nickname,
                    addr = %grant.addr,
                    %group,
                    error = %ErrorChain(&err),
                    "group grant opened on this node only: it could not be written to the fleet store"
                );
            }
        });
    }

    /// Logs the outcome and returns what the worker must do.
    fn decide(
        &self,
        knock: Pending,
        outcome: Result<Claim, StoreError>,
        metrics: Option<&Metrics>,
    ) -> Effect {
        let Pending {
            grant,
            used,
            received,
            src,
            verified_at,
            ..
        } = knock;
        let grant_effect = |grant: verify::Access| {
            logging::accepted(&grant, src);
            if let Some(m) = metrics {
                m.accepted();
            }
            Effect::Grant {
                grant,
                used,
                received,
                verified_at,
            }
        };
        match outcome {
            Ok(Claim::Claimed) => {
                self.counters.claimed.fetch_add(1, Ordering::Relaxed);
                grant_effect(grant)
            }
            Ok(Claim::Taken) => {
                self.counters.replayed.fetch_add(1, Ordering::Relaxed);
                logging::rejected(REPLAYED_IN_FLEET, src, Some(&grant.nickname));
                Effect::RecordUse { used, verified_at }
            }
            Err(err) => match self.policy {
                OnStoreFailure::Refuse => {
                    self.counters
                        .refused_store_down
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        error = %ErrorChain(&err),
                        nickname = %grant.nickname,
                        %src,
                        "knock verified but REFUSED: it cannot be claimed in the fleet store \
                         (on_store_failure = refuse)"
                    );
                    logging::rejected(STORE_UNAVAILABLE, src, Some(&grant.nickname));
                    Effect::RecordUse { used, verified_at }
                }
                OnStoreFailure::Local => {
                    self.counters
                        .accepted_locally
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        error = %ErrorChain(&err),
                        nickname = %grant.nickname,
                        %src,
                        "FLEET STORE UNREACHABLE: knock accepted on this node's one-time state \
                         ONLY (on_store_failure = local); another node could accept a replay of \
                         it until the store returns"
                    );
                    self.store.remember_unclaimed(used);
                    grant_effect(grant)
                }
            },
        }
    }
}
