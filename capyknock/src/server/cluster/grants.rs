//! Group grants (issue 16.4): a knock by a user with `scope = "group:NAME"`, claimed and
//! accepted by one node of the group, opens the user's ports on every node of the group, each
//! applying it through a watch with the same expiry (an HA pair or a round-robin pool).
//!
//! ```text
//! PREFIX grants/GROUP/ADDR/USER   value: GrantRecord (JSON)   lease: the grant's duration
//! ```
//!
//! A node applies a record only for a user it has itself, with ports that user may open here
//! (its own config decides), and records the knock's use in its own replay state as if it had
//! accepted the knock. It catches up at start (before ready) with every live record of its
//! groups.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};
use tokio::sync::mpsc;

use super::{
    store::{Store, StoreError},
    watch_health::TrackedWatch,
    watch_retry::WatchRetry,
};
use crate::{
    ports::PortSpec,
    protocol::{keys::UserId, payload::PacketId, replay::Used, users::User, verify::Access},
    server::worker::Effect,
};

/// What a group grant key holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GrantRecord {
    /// The user (hex id).
    pub user: String,
    /// The ports opened (`tcp/22`, ...).
    pub ports: Vec<String>,
    /// When the grant ends (Unix seconds).
    pub until: u64,
    /// The knock's TOTP step.
    pub step: u64,
    /// The knock's packet id (hex).
    pub packet: String,
    /// The node that accepted the knock.
    pub by: String,
}

/// Who may open what on this node: user id -> (nickname, ports), kept up to date by the daemon.
pub type LocalUsers = Arc<RwLock<HashMap<UserId, (String, Vec<PortSpec>)>>>;

/// The prefix of group `group`'s grant keys.
#[must_use]
pub fn group_prefix(prefix: &str, group: &str) -> String {
    format!("{prefix}grants/{group}/")
}

/// Builds the table of [`LocalUsers`] from the configured users.
pub fn set_local_users(table: &LocalUsers, users: &[User]) {
    if let Ok(mut t) = table.write() {
        *t = users
            .iter()
            .map(|u| (u.id, (u.nickname.clone(), u.ports.clone())))
            .collect();
    }
}

impl Store {
    /// Publishes `grant` (accepted here for `used`) to `group`, under a lease of its duration.
    pub async fn put_group_grant(
        &self,
        group: &str,
        grant: &Access,
        used: &Used,
    ) -> Result<(), StoreError> {
        let record = GrantRecord {
            user: grant.user.to_string(),
            ports: grant.ports.iter().map(ToString::to_string).collect(),
            until: unix(SystemTime::now() + grant.duration),
            step: used.step,
            packet: used.packet_id.to_string(),
            by: self.node().to_owned(),
        };
        let key = format!(
            "{}{}/{}",
            group_prefix(self.prefix(), group),
            grant.addr,
            grant.user
        );
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let ttl = i64::try_from(grant.duration.as_secs().max(1)).unwrap_or(i64::MAX);
        self.with_member(|mut client: Client| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let lease = client.lease_grant(ttl, None).await?;
                client
                    .put(key, value, Some(PutOptions::new().with_lease(lease.id())))
                    .await?;
                Ok(())
            }
        })
        .await
    }
}

/// Applies the grants of this node's groups. Runs until the worker's queue closes.
pub async fn sync_groups(
    store: Store,
    groups: Vec<String>,
    users: LocalUsers,
    effects: mpsc::Sender<Effect>,
    caught_up: Arc<std::sync::atomic::AtomicBool>,
) {
    if groups.is_empty() {
        caught_up.store(true, std::sync::atomic::Ordering::Release);
        return;
    }
    let mut retry = WatchRetry::new(store.track_watch("group grants"));
    loop {
        let Some(client) = store.preferred_client() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let started = tokio::time::Instant::now();
        let synced = sync_once(
            &store, client, &groups, &users, &effects, &caught_up, &mut retry,
        )
        .await;
        if let Err(err) = synced {
            retry
                .failed(&err, started, &store, || effects.is_closed())
                .await;
        }
        if effects.is_closed() {
            return;
        }
    }
}

async fn sync_once(
    store: &Store,
    mut client: Client,
    groups: &[String],
    users: &LocalUsers,
    effects: &mpsc::Sender<Effect>,
    caught_up: &std::sync::atomic::AtomicBool,
    retry: &mut WatchRetry,
) -> Result<(), etcd_client::Error> {
    let grants = format!("{}grants/", store.prefix());
    let mut revision = 0;
    let mut applied = 0usize;
    for group in groups {
        let prefix = group_prefix(store.prefix(), group);
        let resp = client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await?;
        revision = revision.max(
            resp.header()
                .map_or(0, etcd_client::ResponseHeader::revision),
        );
        for kv in resp.kvs() {
            if apply(store, &grants, kv.key(), kv.value(), users, effects).await {
                applied += 1;
            }
        }
    }
    if !caught_up.swap(true, std::sync::atomic::Ordering::AcqRel) {
        tracing::info!(groups = %groups.join(","), applied, "group grants caught up");
    }
    retry.caught_up();
    // One watch on every group grant; records of other groups are skipped.
    let stream = client
        .watch(
            grants.clone(),
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
            // Deletes are the lease running out: the firewall's own timeout closes the grant.
            if kv.version() == 0 {
                continue;
            }
            let in_group = std::str::from_utf8(kv.key()).is_ok_and(|k| {
                groups
                    .iter()
                    .any(|g| k.starts_with(&group_prefix(store.prefix(), g)))
            });
            if in_group {
                apply(store, &grants, kv.key(), kv.value(), users, effects).await;
            }
        }
    }
    Err(etcd_client::Error::WatchError("the watch ended".into()))
}

/// Applies one record written by another node; whether it was applied.
async fn apply(
    store: &Store,
    grants_prefix: &str,
    key: &[u8],
    value: &[u8],
    users: &LocalUsers,
    effects: &mpsc::Sender<Effect>,
) -> bool {
    let Some((addr, record)) = parse(grants_prefix, key, value) else {
        return false;
    };
    if record.by == store.node() {
        return false;
    }
    let Some(until) = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(record.until)) else {
        return false;
    };
    let Ok(duration) = until.duration_since(SystemTime::now()) else {
        return false;
    };
    let (Ok(user), Ok(packet)) = (
        record.user.parse::<UserId>(),
        record.packet.parse::<PacketId>(),
    ) else {
        tracing::warn!(%addr, by = %record.by, "ignoring a malformed group grant");
        return false;
    };
    let Some((nickname, allowed)) = users.read().ok().and_then(|t| t.get(&user).cloned()) else {
        tracing::warn!(%addr, %user, by = %record.by, "group grant for a user this node does not have: not applied");
        return false;
    };
    let mut ports = Vec::new();
    for p in &record.ports {
        match p.parse::<PortSpec>() {
            Ok(spec) if allowed.contains(&spec) => ports.push(spec),
            _ => {
                tracing::warn!(%addr, nickname = %nickname, port = %p, by = %record.by, "group grant asks for a port this node does not allow the user: not applied");
                return false;
            }
        }
    }
    tracing::info!(
        nickname = %nickname,
        %addr,
        ports = %record.ports.join(","),
        by = %record.by,
        expires_in = ?Duration::from_secs(duration.as_secs()),
        "group grant applied from the fleet"
    );
    let grant = Access {
        user,
        nickname,
        addr,
        ports,
        duration,
    };
    effects
        .send(Effect::Grant {
            grant,
            used: Used {
                user,
                step: record.step,
                packet_id: packet,
            },
            // Applied now: the use is recorded as of this node's clock.
            verified_at: unix(SystemTime::now()),
            received: Instant::now(),
        })
        .await
        .is_ok()
}

/// `PREFIX grants/GROUP/ADDR/USER` and its record.
fn parse(grants_prefix: &str, key: &[u8], value: &[u8]) -> Option<(IpAddr, GrantRecord)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(grants_prefix)?;
    let mut parts = rest.split('/');
    let (_group, addr, _user) = (parts.next()?, parts.next()?, parts.next()?);
    let addr = addr.parse::<IpAddr>().ok()?.to_canonical();
    let record = serde_json::from_slice::<GrantRecord>(value).ok()?;
    Some((addr, record))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        let record = GrantRecord {
            user: "01".repeat(16),
            ports: vec!["tcp/22".into()],
            until: 1_800_000_000,
            step: 60_000_000,
            packet: "02".repeat(16),
            by: "node-a".into(),
        };
        let value = serde_json::to_vec(&record).unwrap();
        let key = format!("/ck/grants/pool/192.0.2.9/{}", "01".repeat(16));
        assert_eq!(
            parse("/ck/grants/", key.as_bytes(), &value),
            Some(("192.0.2.9".parse().unwrap(), record))
        );
        assert_eq!(parse("/ck/grants/", b"/ck/grants/pool/x/y", &value), None);
        assert_eq!(group_prefix("/ck/", "pool"), "/ck/grants/pool/");
    }
}
