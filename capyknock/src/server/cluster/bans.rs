//! Bans across the fleet (issue 16.3): a ban or unban on any node (CLI, control socket,
//! fail2ban) is applied there at once, as on a single server, and written to etcd; every node
//! watches the ban keys and applies what the others wrote within milliseconds.
//!
//! ```text
//! PREFIX bans/ADDR    value: {"until": UNIX_SECS | null, "by": NODE}
//!                     timed bans under a lease of their duration (etcd deletes them at expiry)
//! ```
//!
//! A node catches up before it reports ready: it reads every ban key, applies them, then
//! watches from the revision it read, so nothing falls between the read and the watch. When
//! the watch breaks (store down, member gone) it reads everything again on return, and lifts
//! the fleet bans that disappeared meanwhile. Bans a node applies keep working while etcd is
//! down (they live in its firewall and state directory, as on a single server).

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};
use tokio::sync::{mpsc, oneshot};

use super::{
    store::{Store, StoreError},
    watch_health::TrackedWatch,
    watch_retry::WatchRetry,
};
use crate::server::{control::unbannable, worker::Effect};

/// What a ban key holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BanRecord {
    /// When the ban ends (Unix seconds); `None`: until unbanned.
    pub until: Option<u64>,
    /// The node that wrote it.
    pub by: String,
}

/// The key of `addr`'s ban.
#[must_use]
pub fn ban_key(prefix: &str, addr: IpAddr) -> String {
    format!("{prefix}bans/{}", addr.to_canonical())
}

/// The prefix of every ban key.
#[must_use]
pub fn bans_prefix(prefix: &str) -> String {
    format!("{prefix}bans/")
}

impl Store {
    /// Writes `addr`'s ban (under a lease of its duration when timed).
    pub async fn put_ban(
        &self,
        addr: IpAddr,
        duration: Option<Duration>,
    ) -> Result<(), StoreError> {
        let until = duration.map(|d| unix(SystemTime::now() + d));
        let record = BanRecord {
            until,
            by: self.node().to_owned(),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let key = ban_key(self.prefix(), addr);
        self.with_member(|mut client: Client| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let options = match duration {
                    Some(d) => {
                        let ttl = i64::try_from(d.as_secs().max(1)).unwrap_or(i64::MAX);
                        let lease = client.lease_grant(ttl, None).await?;
                        Some(PutOptions::new().with_lease(lease.id()))
                    }
                    None => None,
                };
                client.put(key, value, options).await?;
                Ok(())
            }
        })
        .await
    }

    /// Deletes `addr`'s ban.
    pub async fn delete_ban(&self, addr: IpAddr) -> Result<(), StoreError> {
        let key = ban_key(self.prefix(), addr);
        self.with_member(|mut client: Client| {
            let key = key.clone();
            async move {
                client.delete(key, None).await?;
                Ok(())
            }
        })
        .await
    }
}

/// Keeps this node's bans in step with the fleet's. See the module docs.
#[derive(Debug, Clone)]
pub struct BanSync {
    store: Store,
    caught_up: Arc<AtomicBool>,
}

impl BanSync {
    /// Starts syncing: reads and applies every ban, then watches. `local` are this host's own
    /// addresses (never banned here, whoever asks).
    #[must_use]
    pub fn start(store: Store, effects: mpsc::Sender<Effect>, local: Vec<IpAddr>) -> Self {
        let sync = Self {
            store,
            caught_up: Arc::new(AtomicBool::new(false)),
        };
        tokio::spawn(sync.clone().run(effects, local));
        sync
    }

    /// Waits until the first catch-up is applied, or `within` has passed (then false: the
    /// store is down; bans from the fleet arrive once it is back).
    pub async fn wait_caught_up(&self, within: Duration) -> bool {
        let started = tokio::time::Instant::now();
        while !self.caught_up.load(Ordering::Acquire) {
            if started.elapsed() >= within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    async fn run(self, effects: mpsc::Sender<Effect>, local: Vec<IpAddr>) {
        // Addresses banned here because the fleet said so (lifted when the fleet's ban goes).
        let mut from_fleet: HashSet<IpAddr> = HashSet::new();
        let mut retry = WatchRetry::new(self.store.track_watch("bans"));
        loop {
            let Some(client) = self.store.preferred_client() else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let started = tokio::time::Instant::now();
            if let Err(err) = self
                .sync_once(client, &effects, &local, &mut from_fleet, &mut retry)
                .await
            {
                retry
                    .failed(&err, started, &self.store, || effects.is_closed())
                    .await;
            }
            if effects.is_closed() {
                return;
            }
        }
    }

    async fn sync_once(
        &self,
        mut client: Client,
        effects: &mpsc::Sender<Effect>,
        local: &[IpAddr],
        from_fleet: &mut HashSet<IpAddr>,
        retry: &mut WatchRetry,
    ) -> Result<(), etcd_client::Error> {
        let prefix = bans_prefix(self.store.prefix());
        let resp = client
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = resp
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        let mut present = HashSet::new();
        for kv in resp.kvs() {
            if let Some((addr, record)) = parse(&prefix, kv.key(), kv.value()) {
                present.insert(addr);
                if self.apply_ban(effects, local, addr, &record).await {
                    from_fleet.insert(addr);
                }
            }
        }
        for gone in from_fleet
            .iter()
            .filter(|a| !present.contains(a))
            .copied()
            .collect::<Vec<_>>()
        {
            from_fleet.remove(&gone);
            apply_unban(effects, gone).await;
        }
        if !self.caught_up.swap(true, Ordering::AcqRel) {
            tracing::info!(bans = present.len(), "fleet bans caught up");
        }
        retry.caught_up();
        let stream = client
            .watch(
                prefix.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        let mut stream = TrackedWatch::new(stream, Arc::clone(retry.tracker()));
        while let Some(resp) = stream.next().await? {
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                if kv.version() == 0 {
                    // A delete (an unban, or a timed ban's lease ran out).
                    if let Some(addr) = parse_addr(&prefix, kv.key()) {
                        from_fleet.remove(&addr);
                        apply_unban(effects, addr).await;
                    }
                } else if let Some((addr, record)) = parse(&prefix, kv.key(), kv.value())
                    && record.by != self.store.node()
                    && self.apply_ban(effects, local, addr, &record).await
                {
                    from_fleet.insert(addr);
                }
            }
        }
        Err(etcd_client::Error::WatchError("the watch ended".into()))
    }

    /// Applies a fleet ban here; whether it was applied.
    async fn apply_ban(
        &self,
        effects: &mpsc::Sender<Effect>,
        local: &[IpAddr],
        addr: IpAddr,
        record: &BanRecord,
    ) -> bool {
        if let Some(why) = unbannable(addr, local) {
            tracing::warn!(%addr, by = %record.by, why, "fleet ban not applied on this node");
            return false;
        }
        let until = match record.until {
            Some(u) => {
                let t = SystemTime::UNIX_EPOCH + Duration::from_secs(u);
                if t <= SystemTime::now() {
                    return false;
                }
                Some(t)
            }
            None => None,
        };
        let (reply, answer) = oneshot::channel();
        if effects
            .send(Effect::Ban { addr, until, reply })
            .await
            .is_err()
        {
            return false;
        }
        match answer.await {
            Ok(r) if r.ok => {
                tracing::info!(
                    %addr,
                    by = %record.by,
                    "address banned by the fleet"
                );
                true
            }
            Ok(r) => {
                tracing::warn!(%addr, error = ?r.error, "fleet ban refused here");
                false
            }
            Err(_) => false,
        }
    }
}

async fn apply_unban(effects: &mpsc::Sender<Effect>, addr: IpAddr) {
    let (reply, answer) = oneshot::channel();
    if effects.send(Effect::Unban { addr, reply }).await.is_ok()
        && let Ok(r) = answer.await
        && r.ok
    {
        tracing::info!(%addr, "address unbanned by the fleet");
    }
}

fn parse_addr(prefix: &str, key: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(prefix)?
        .parse::<IpAddr>()
        .ok()
        .map(|a| a.to_canonical())
}

fn parse(prefix: &str, key: &[u8], value: &[u8]) -> Option<(IpAddr, BanRecord)> {
    let addr = parse_addr(prefix, key)?;
    match serde_json::from_slice::<BanRecord>(value) {
        Ok(record) => Some((addr, record)),
        Err(err) => {
            tracing::warn!(%addr, error = %err, "ignoring a malformed fleet ban record");
            None
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_records() {
        let a: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ban_key("/ck/", a), "/ck/bans/192.0.2.7");
        let record = BanRecord {
            until: Some(1_800_000_000),
            by: "node-a".into(),
        };
        let value = serde_json::to_vec(&record).unwrap();
        assert_eq!(value, br#"{"until":1800000000,"by":"node-a"}"#);
        assert_eq!(
            parse("/ck/bans/", b"/ck/bans/2001:db8::1", &value),
            Some(("2001:db8::1".parse().unwrap(), record))
        );
        assert_eq!(parse("/ck/bans/", b"/ck/bans/nonsense", &value), None);
        assert_eq!(parse("/ck/bans/", b"/ck/bans/192.0.2.1", b"{"), None);
        assert_eq!(parse("/ck/bans/", b"/other/192.0.2.1", &value), None);
    }
}
