//! A node's copy of the users kept in the store (`users_from_store`, docs/FLEET.md "Users from
//! the store"): reads every record under `PREFIX users/`, opens each with the seal key
//! ([`super::users::open`]), publishes the set, then watches from the revision it read and
//! publishes every addition, change and removal. The daemon's core applies each published set
//! the way a reload applies the config's users (`server::daemon`), so the verifier, the XDP
//! program's user map and the firewall's protected ports follow without a reload.
//!
//! One line per change at info level (nickname, id, what changed; never a secret); a record
//! that does not open or is malformed is refused with an error naming its key and leaves the
//! other users alone. When the watch breaks, the node reads everything again once the store
//! answers (the fleet watches' [`super::watch_retry`]: backoff, one warning per break) and
//! publishes the difference, so nothing is missed; `status` shows the watch's lag like the
//! others' ([`super::watch_health`]).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use etcd_client::{Client, GetOptions, WatchOptions};
use tokio::sync::watch;

use super::{
    store::Store,
    users::{MAX_STORE_USERS, SealKey, StoreUser, describe_change, open, users_prefix},
    watch_health::TrackedWatch,
    watch_retry::WatchRetry,
};

/// The users the store holds now (every one opened), in key order.
pub type StoreUsers = Arc<Vec<StoreUser>>;

/// Records read per request: a page of well-formed records (at most
/// [`super::users::MAX_RECORD_BYTES`] each)
/// stays far below gRPC's 4 MiB message limit, whatever the number of users.
const PAGE: i64 = 256;

/// One user record as read.
#[derive(Debug, Clone)]
pub struct Stored {
    /// `PREFIX users/ID`.
    pub key: String,
    /// The record.
    pub value: Vec<u8>,
    /// The revision that last wrote it.
    pub revision: i64,
}

/// Every record under `users` (`PREFIX users/`, ending in `/`), at most [`MAX_STORE_USERS`],
/// read page by page at one revision: the records, that revision, and whether records were
/// left unread (beyond the cap).
pub async fn read_all(
    client: &mut Client,
    users: &str,
) -> Result<(Vec<Stored>, i64, bool), etcd_client::Error> {
    // The end of the range: the prefix with its last byte (`/`) plus one.
    let mut end = users.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    let mut from = users.as_bytes().to_vec();
    let (mut out, mut revision) = (Vec::new(), 0);
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision != 0 {
            options = options.with_revision(revision);
        }
        let resp = client.get(from.clone(), Some(options)).await?;
        if revision == 0 {
            revision = resp
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
        }
        out.extend(resp.kvs().iter().map(|kv| Stored {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            revision: kv.mod_revision(),
        }));
        let Some(last) = resp.kvs().last().filter(|_| resp.more()) else {
            return Ok((out, revision, false));
        };
        if out.len() >= MAX_STORE_USERS {
            out.truncate(MAX_STORE_USERS);
            return Ok((out, revision, true));
        }
        // The next page starts just after the last key read.
        from = last.key().to_vec();
        from.push(0);
    }
}

/// Starts keeping `tx` up to date with the store's users; `caught_up` is set once the first
/// full read is published. Runs until every receiver of `tx` is gone.
pub fn start(
    store: Store,
    key: SealKey,
    tx: watch::Sender<StoreUsers>,
    caught_up: Arc<AtomicBool>,
) {
    tokio::spawn(run(store, key, tx, caught_up));
}

async fn run(
    store: Store,
    key: SealKey,
    tx: watch::Sender<StoreUsers>,
    caught_up: Arc<AtomicBool>,
) {
    let mut current: BTreeMap<String, StoreUser> = BTreeMap::new();
    let mut retry = WatchRetry::new(store.track_watch("users"));
    loop {
        if tx.is_closed() {
            return;
        }
        let Some(client) = store.preferred_client() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let sync = Sync {
            store: &store,
            key: &key,
            tx: &tx,
            caught_up: &caught_up,
        };
        let started = tokio::time::Instant::now();
        if let Err(err) = sync.once(client, &mut current, &mut retry).await {
            retry.failed(&err, started, &store, || tx.is_closed()).await;
        }
    }
}

struct Sync<'a> {
    store: &'a Store,
    key: &'a SealKey,
    tx: &'a watch::Sender<StoreUsers>,
    caught_up: &'a AtomicBool,
}

impl Sync<'_> {
    async fn once(
        &self,
        mut client: Client,
        current: &mut BTreeMap<String, StoreUser>,
        retry: &mut WatchRetry,
    ) -> Result<(), etcd_client::Error> {
        let prefix = users_prefix(self.store.prefix());
        let (records, revision, more) = read_all(&mut client, &prefix).await?;
        if more {
            tracing::error!(
                max = MAX_STORE_USERS,
                "the fleet store holds more user records than a node takes: the first ones in \
                 key order are used, the others ignored"
            );
        }
        let mut read = BTreeMap::new();
        for r in records {
            if let Some(u) = self.open_logged(r.key.as_bytes(), &r.value) {
                read.insert(u.key.clone(), u);
            }
        }
        self.publish(current, read);
        if !self.caught_up.swap(true, Ordering::AcqRel) {
            tracing::info!(
                users = current.len(),
                "users from the fleet store caught up"
            );
        }
        retry.caught_up();
        let stream = client
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        let mut stream = TrackedWatch::new(stream, Arc::clone(retry.tracker()));
        while let Some(resp) = stream.next().await? {
            let mut next = current.clone();
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                // A delete, or a put that does not open: the user goes (fail closed).
                next.remove(&key);
                if kv.version() == 0 {
                    continue;
                }
                if next.len() >= MAX_STORE_USERS {
                    tracing::error!(key = %key, max = MAX_STORE_USERS, "user record refused: the store holds too many users");
                    continue;
                }
                if let Some(u) = self.open_logged(kv.key(), kv.value()) {
                    next.insert(key, u);
                }
            }
            self.publish(current, next);
        }
        Err(etcd_client::Error::WatchError("the watch ended".into()))
    }

    /// Opens one record, logging why when it cannot be used.
    fn open_logged(&self, key: &[u8], value: &[u8]) -> Option<StoreUser> {
        let key = String::from_utf8_lossy(key).into_owned();
        match open(self.key, self.store.prefix(), &key, value) {
            Ok(user) => Some(StoreUser { key, user }),
            Err(err) => {
                tracing::error!(
                    key = %key,
                    error = %err,
                    "user record in the fleet store refused; the other users are unaffected"
                );
                None
            }
        }
    }

    /// Logs what changed from `current` to `next`, makes `next` current and publishes it when
    /// something changed.
    fn publish(
        &self,
        current: &mut BTreeMap<String, StoreUser>,
        next: BTreeMap<String, StoreUser>,
    ) {
        let mut changed = false;
        for (key, old) in current.iter() {
            if !next.contains_key(key) {
                changed = true;
                tracing::info!(
                    nickname = %old.user.nickname,
                    id = %old.user.id,
                    "user removed from the fleet store: its knocks are refused from now on"
                );
            }
        }
        for (key, new) in &next {
            match current.get(key) {
                None => {
                    changed = true;
                    tracing::info!(
                        nickname = %new.user.nickname,
                        id = %new.user.id,
                        ports = %new.user.ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                        "user added from the fleet store"
                    );
                }
                Some(old) if old.user != new.user => {
                    changed = true;
                    tracing::info!(
                        nickname = %new.user.nickname,
                        id = %new.user.id,
                        changed = %describe_change(&old.user, &new.user),
                        "user changed in the fleet store"
                    );
                }
                Some(_) => {}
            }
        }
        *current = next;
        if changed || !self.caught_up.load(Ordering::Acquire) {
            let _ = self.tx.send(Arc::new(current.values().cloned().collect()));
        }
    }
}
