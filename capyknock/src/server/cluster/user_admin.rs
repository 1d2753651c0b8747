//! `capyknock keygen --cluster CONFIG`: adds, changes and removes the users kept in the store
//! (`users_from_store`, docs/FLEET.md "Users from the store"). Each operation connects with
//! the node's own `[cluster]` settings (TLS, etcd user), reads every record, and writes with a
//! transaction that fails when another admin changed the same key meanwhile.
//!
//! Adding refuses a nickname already in use (in the store or in CONFIG's `[[user]]`s) and
//! refuses to go on when a record in the store does not open with this host's seal key (its
//! key differs from the fleet's: a user sealed with it would open nowhere else). The first
//! `keygen --cluster` of a fleet creates the seal key (mode 0600) when the store holds no
//! user yet.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use super::{
    config::ClusterSettings,
    store::{Store, StoreError},
    user_sync::{Stored, read_all},
    users::{
        MAX_STORE_USERS, SealKey, SealKeyError, open, public_fields, seal, user_key, users_prefix,
    },
};
use crate::{
    ports::PortSpec,
    protocol::{keys::KeyError, users::User},
    server::config::{ACCESS_RANGE, Settings},
};

/// How long `keygen --cluster` waits for the store.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// CONFIG cannot be used for this.
    #[error("{0}")]
    Config(String),
    /// The operation was refused; the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// The store could not be reached or answered with an error.
    #[error("the fleet store")]
    Store(#[from] StoreError),
    /// The seal key could not be read or created.
    #[error(transparent)]
    SealKey(#[from] SealKeyError),
    /// The OS random generator failed.
    #[error(transparent)]
    Random(#[from] KeyError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// Where users go: the store of CONFIG's `[cluster]`, sealed with its `seal_key`.
#[derive(Debug, Clone)]
pub struct Target {
    config: PathBuf,
    cluster: ClusterSettings,
    seal_key: PathBuf,
    freshness: Duration,
    config_nicknames: Vec<String>,
}

impl Target {
    /// The store of `settings` (loaded from CONFIG), which must have `[cluster]` with
    /// `users_from_store = true`.
    pub fn of(settings: &Settings) -> Result<Self, AdminError> {
        let config = settings.path.clone();
        let Some(cluster) = settings.cluster.clone() else {
            return Err(AdminError::Config(format!(
                "{} has no [cluster] section: --cluster needs the config of a fleet node \
                 (docs/FLEET.md)",
                config.display()
            )));
        };
        let Some(seal_key) = cluster.seal_key.clone() else {
            return Err(AdminError::Config(format!(
                "{}: [cluster] does not take users from the store: add users_from_store = true \
                 and seal_key = \"/etc/capyknock/cluster-seal.key\" (docs/FLEET.md)",
                config.display()
            )));
        };
        Ok(Self {
            config,
            cluster,
            seal_key,
            freshness: settings.freshness,
            config_nicknames: settings.users.iter().map(|u| u.nickname.clone()).collect(),
        })
    }

    /// The seal key's file.
    #[must_use]
    pub fn seal_key_path(&self) -> &std::path::Path {
        &self.seal_key
    }

    /// The key of `user`'s record.
    #[must_use]
    pub fn key_of(&self, user: &User) -> String {
        user_key(&self.cluster.prefix, &user.id)
    }
}

/// What [`add`] did.
#[derive(Debug, Clone)]
pub struct Added {
    /// The record's key.
    pub key: String,
    /// The seal key file, when this run created it.
    pub seal_key_created: Option<PathBuf>,
}

/// Runs `op` with a store client connected to `target`'s etcd.
fn with_store<T>(
    target: &Target,
    op: impl AsyncFnOnce(&Store) -> Result<T, AdminError>,
) -> Result<T, AdminError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AdminError::Runtime)?;
    runtime.block_on(async {
        let store = Store::start(&target.cluster, target.freshness)?;
        let started = Instant::now();
        while !store.is_healthy() {
            if started.elapsed() > CONNECT_WITHIN {
                return Err(AdminError::Refused(format!(
                    "the fleet store (etcd at {}) did not answer within {}s: nothing was \
                     changed",
                    target.cluster.endpoints.join(", "),
                    CONNECT_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        op(&store).await
    })
}

/// Every user record in the store (up to [`MAX_STORE_USERS`]).
async fn records(store: &Store) -> Result<Vec<Stored>, AdminError> {
    let prefix = users_prefix(store.prefix());
    Ok(store
        .with_member(|mut c: Client| {
            let prefix = prefix.clone();
            async move { Ok(read_all(&mut c, &prefix).await?.0) }
        })
        .await?)
}

/// Runs `txn`; whether its comparison held.
async fn commit(store: &Store, txn: Txn) -> Result<bool, AdminError> {
    Ok(store
        .with_member(|mut c: Client| {
            let txn = txn.clone();
            async move { Ok(c.txn(txn).await?.succeeded()) }
        })
        .await?)
}

/// The record of `nickname` (case-insensitive).
fn find<'a>(list: &'a [Stored], nickname: &str) -> Option<&'a Stored> {
    list.iter()
        .find(|s| public_fields(&s.value).is_ok_and(|p| p.nickname.eq_ignore_ascii_case(nickname)))
}

/// Seals `user` into the store, refusing a nickname in use; creates the seal key when this is
/// the fleet's first user and the file does not exist.
pub fn add(target: &Target, user: &User) -> Result<Added, AdminError> {
    if target
        .config_nicknames
        .iter()
        .any(|n| n.eq_ignore_ascii_case(&user.nickname))
    {
        return Err(AdminError::Refused(format!(
            "nickname {:?} is a [[user]] of {}: choose another",
            user.nickname,
            target.config.display()
        )));
    }
    with_store(target, async |store| {
        let list = records(store).await?;
        let (key, created) = match SealKey::read(&target.seal_key) {
            Ok(k) => (k, None),
            Err(SealKeyError::Missing { .. }) if list.is_empty() => (
                SealKey::create(&target.seal_key)?,
                Some(target.seal_key.clone()),
            ),
            Err(SealKeyError::Missing { path }) => {
                return Err(AdminError::Refused(format!(
                    "the store already holds {} user records but {} does not exist: copy the \
                     fleet's seal key there from a node that has it (mode 0600)",
                    list.len(),
                    path.display()
                )));
            }
            Err(err) => return Err(err.into()),
        };
        for s in &list {
            if let Err(err) = open(&key, store.prefix(), &s.key, &s.value) {
                return Err(AdminError::Refused(format!(
                    "user record {} does not open with {} ({err}): this host's seal key may \
                     differ from the fleet's, and a user sealed with it would open nowhere \
                     else; copy the key from a node that opens the records, or delete the bad \
                     record (etcdctl del {})",
                    s.key,
                    target.seal_key.display(),
                    s.key
                )));
            }
        }
        if find(&list, &user.nickname).is_some() {
            return Err(AdminError::Refused(format!(
                "nickname {:?} is already a user in the fleet store: choose another, or change \
                 that user with --change",
                user.nickname
            )));
        }
        if list.len() >= MAX_STORE_USERS {
            return Err(AdminError::Refused(format!(
                "the fleet store holds {MAX_STORE_USERS} users, the most a node takes"
            )));
        }
        let etcd_key = user_key(store.prefix(), &user.id);
        let value = seal(&key, &etcd_key, user)?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(etcd_key.clone(), value, None)]);
        if !commit(store, txn).await? {
            return Err(AdminError::Refused(format!(
                "{etcd_key} exists already (a random id taken twice?): run keygen again"
            )));
        }
        Ok(Added {
            key: etcd_key,
            seal_key_created: created,
        })
    })
}

/// Removes `nickname` from the store; its id and key.
pub fn remove(target: &Target, nickname: &str) -> Result<(String, String), AdminError> {
    with_store(target, async |store| {
        let list = records(store).await?;
        let Some(s) = find(&list, nickname) else {
            return Err(AdminError::Refused(format!(
                "no user {nickname:?} in the fleet store (under {})",
                users_prefix(store.prefix())
            )));
        };
        let id = public_fields(&s.value).map(|p| p.id).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                s.key.clone(),
                CompareOp::Equal,
                s.revision,
            )])
            .and_then([TxnOp::delete(s.key.clone(), None)]);
        if !commit(store, txn).await? {
            return Err(AdminError::Refused(format!(
                "{} changed while it was being removed: run the command again",
                s.key
            )));
        }
        Ok((id, s.key.clone()))
    })
}

/// Changes `nickname`'s ports and/or access in the store, keeping its id and secrets (sealed
/// again under a new nonce); the user before and after.
pub fn change(
    target: &Target,
    nickname: &str,
    ports: Option<Vec<PortSpec>>,
    access: Option<Duration>,
) -> Result<(User, User), AdminError> {
    if ports.is_none() && access.is_none() {
        return Err(AdminError::Refused(
            "--change needs what to change: --ports and/or --access".into(),
        ));
    }
    if let Some(a) = access
        && (a < ACCESS_RANGE.0 || a > ACCESS_RANGE.1)
    {
        return Err(AdminError::Refused(
            "--access must be between 1s and 7 days".into(),
        ));
    }
    with_store(target, async |store| {
        let key = SealKey::read(&target.seal_key)?;
        let list = records(store).await?;
        let Some(s) = find(&list, nickname) else {
            return Err(AdminError::Refused(format!(
                "no user {nickname:?} in the fleet store (under {})",
                users_prefix(store.prefix())
            )));
        };
        let old = open(&key, store.prefix(), &s.key, &s.value).map_err(|err| {
            AdminError::Refused(format!(
                "user record {} does not open with {} ({err})",
                s.key,
                target.seal_key.display()
            ))
        })?;
        let mut new = old.clone();
        if let Some(p) = ports {
            new.ports = p;
        }
        if let Some(a) = access {
            new.access = a;
        }
        let value = seal(&key, &s.key, &new)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                s.key.clone(),
                CompareOp::Equal,
                s.revision,
            )])
            .and_then([TxnOp::put(s.key.clone(), value, None)]);
        if !commit(store, txn).await? {
            return Err(AdminError::Refused(format!(
                "{} changed while it was being changed: run the command again",
                s.key
            )));
        }
        Ok((old, new))
    })
}
