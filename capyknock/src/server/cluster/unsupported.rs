//! Fleet mode off Linux: the daemon's side of [`fleet`] and [`store`] with the same names, where
//! starting refuses the `[cluster]` section with a clear error. The etcd client (gRPC over
//! tonic, TLS through ring) is built for Linux only for now; Windows fleet members are future
//! work (docs/FLEET.md). [`fleet::Fleet`] has no value, so nothing past `start` can run.

/// The store's errors off Linux: only "not here".
pub mod store {
    /// Why fleet mode could not start.
    #[derive(Debug, thiserror::Error)]
    pub enum StoreError {
        /// Fleet mode is not built for this operating system.
        #[error(
            "fleet mode runs on Linux only for now: remove the [cluster] section to run this server on its own"
        )]
        Unsupported,
    }
}

/// The daemon's fleet handle off Linux: never constructed.
pub mod fleet {
    use std::{net::IpAddr, time::Duration};

    use tokio::sync::mpsc;

    use super::{super::config::ClusterSettings, store::StoreError};
    use crate::{
        protocol::{replay::Used, users::User, verify},
        server::{metrics::Metrics, status::ClusterStatus, worker::Effect},
    };

    /// No fleet can exist here ([`Fleet::start`] always fails).
    #[derive(Debug, Clone)]
    pub enum Fleet {}

    /// A verified knock waiting for its claim (same fields as on Linux).
    #[derive(Debug)]
    pub struct Pending {
        /// What the knock grants.
        pub grant: verify::Access,
        /// The code it used.
        pub used: Used,
        /// When its packet arrived.
        pub received: std::time::Instant,
        /// Its source address.
        pub src: IpAddr,
        /// The user's grant scope, if any.
        pub scope: Option<String>,
        /// When it was verified (Unix seconds).
        pub verified_at: u64,
    }

    impl Fleet {
        /// Always refuses: see the module docs.
        pub fn start(
            _settings: &ClusterSettings,
            _freshness: Duration,
        ) -> Result<Self, StoreError> {
            Err(StoreError::Unsupported)
        }

        /// Unreachable (no value exists).
        pub fn set_users(&self, _users: &[User]) {
            match *self {}
        }

        /// Unreachable (no value exists).
        #[must_use]
        pub fn store_users(
            &self,
        ) -> Option<tokio::sync::watch::Receiver<std::sync::Arc<Vec<super::super::users::StoreUser>>>>
        {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn start_sync(
            &mut self,
            _effects: mpsc::Sender<Effect>,
            _local: Vec<IpAddr>,
            _within: Duration,
        ) -> std::future::Ready<bool> {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn publish_ban(&self, _addr: IpAddr, _duration: Option<Duration>) {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn publish_unban(&self, _addr: IpAddr) {
            match *self {}
        }

        /// Unreachable (no value exists).
        #[must_use]
        pub fn status(&self) -> ClusterStatus {
            match *self {}
        }

        /// Unreachable (no value exists).
        pub fn claim_then_grant(
            &self,
            _knock: Pending,
            _effects: mpsc::Sender<Effect>,
            _metrics: Option<Metrics>,
        ) {
            match *self {}
        }
    }
}
