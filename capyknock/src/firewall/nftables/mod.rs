//! nftables backend through netlink (work in progress: the structure lands first).

use std::{net::IpAddr, time::SystemTime};

use super::{
    Backend, Error,
    model::{Ban, Grant, GrantKey, Ledger},
};
use crate::ports::PortSpec;

/// Errors of the nftables backend.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// Not yet implemented.
    #[error("the nftables backend is not implemented yet")]
    NotYet,
}

/// The nftables backend.
#[derive(Debug)]
pub struct NftBackend;

impl NftBackend {
    /// Prepares the backend for our table.
    pub fn new(
        _table: &str,
        _priority: i32,
        _protected: &[PortSpec],
        _knock_ports: &[u16],
    ) -> Result<Self, NftError> {
        Err(NftError::NotYet)
    }
}

impl Backend for NftBackend {
    fn name(&self) -> &'static str {
        "nftables"
    }
    fn expires_by_itself(&self) -> bool {
        true
    }
    fn persistent_ledger(&self) -> bool {
        false
    }
    fn add_grants(&mut self, _grants: &[Grant], _now: SystemTime) -> Result<(), Error> {
        Err(NftError::NotYet.into())
    }
    fn remove_grants(&mut self, _keys: &[GrantKey]) -> Result<(), Error> {
        Err(NftError::NotYet.into())
    }
    fn add_ban(&mut self, _ban: &Ban, _now: SystemTime) -> Result<bool, Error> {
        Err(NftError::NotYet.into())
    }
    fn remove_ban(&mut self, _addr: IpAddr) -> Result<(), Error> {
        Err(NftError::NotYet.into())
    }
    fn restore(&mut self, _ledger: &Ledger, _now: SystemTime) -> Result<(), Error> {
        Err(NftError::NotYet.into())
    }
    fn remove_all(&mut self, _ledger: &Ledger) -> Result<(), Error> {
        Err(NftError::NotYet.into())
    }
}

/// Deletes our table; false when it did not exist.
pub fn remove_table(_table: &str) -> Result<bool, NftError> {
    Err(NftError::NotYet)
}
