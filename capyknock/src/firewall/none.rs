//! The `none` backend: changes nothing and logs what it would do. For monitoring a deployment
//! before enforcing it, and for tests of the daemon that must not need root.

use std::{net::IpAddr, time::SystemTime};

use super::{
    Backend, Error,
    model::{Ban, GrantKey, Ledger, PortGrant},
};

/// Logs every change at `info` instead of making it.
#[derive(Debug, Default)]
pub struct NoneBackend;

impl Backend for NoneBackend {
    fn name(&self) -> &'static str {
        "none"
    }

    fn expires_by_itself(&self) -> bool {
        false
    }

    fn persistent_ledger(&self) -> bool {
        false
    }

    fn add_grants(&mut self, grants: &[PortGrant], now: SystemTime) -> Result<(), Error> {
        for g in grants {
            tracing::info!(
                addr = %g.addr,
                port = %g.key().port_spec(),
                seconds = g.remaining(now).map_or(0, |d| d.as_secs()),
                "firewall none: would open"
            );
        }
        Ok(())
    }

    fn remove_grants(&mut self, keys: &[GrantKey]) -> Result<(), Error> {
        for k in keys {
            tracing::info!(addr = %k.addr, port = %k.port_spec(), "firewall none: would close");
        }
        Ok(())
    }

    fn add_ban(&mut self, ban: &Ban, _now: SystemTime) -> Result<bool, Error> {
        tracing::info!(addr = %ban.addr, until = %crate::log_fields::Until(ban.until), "firewall none: would ban");
        Ok(true)
    }

    fn remove_ban(&mut self, addr: IpAddr) -> Result<(), Error> {
        tracing::info!(%addr, "firewall none: would unban");
        Ok(())
    }

    fn restore(&mut self, ledger: &Ledger, _now: SystemTime) -> Result<(), Error> {
        tracing::info!(
            grants = ledger.grant_count(),
            bans = ledger.ban_count(),
            "firewall none: would set up its rules"
        );
        Ok(())
    }

    fn remove_all(&mut self, _ledger: &Ledger) -> Result<(), Error> {
        tracing::info!("firewall none: would remove all its rules");
        Ok(())
    }
}
