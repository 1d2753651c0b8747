//! Windows Firewall backend: applies the rules of [`super::windows_model`] through the COM API
//! (`INetFwPolicy2`, `INetFwRule`), never through command strings. Only rules named
//! `capyknock ...` are ever created, read back or removed.

use std::{
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use windows::{
    Win32::{
        Foundation::{ERROR_INSUFFICIENT_BUFFER, NO_ERROR, RPC_E_CHANGED_MODE, VARIANT_TRUE},
        NetworkManagement::{
            IpHelper::{
                GetTcp6Table2, GetTcpTable2, MIB_TCP_STATE_ESTAB, MIB_TCP6ROW2, MIB_TCP6TABLE2,
                MIB_TCPROW2, MIB_TCPTABLE2,
            },
            WindowsFirewall::{
                INetFwPolicy2, INetFwRule, INetFwRules, NET_FW_ACTION_ALLOW, NET_FW_ACTION_BLOCK,
                NET_FW_PROFILE2_ALL, NET_FW_RULE_DIR_IN, NetFwPolicy2, NetFwRule,
            },
        },
        System::{
            Com::{
                CLSCTX_INPROC_SERVER, COINIT_MULTITHREADED, CoCreateInstance, CoInitializeEx,
                CoUninitialize, IDispatch,
            },
            Ole::IEnumVARIANT,
            Variant::{VARIANT, VT_DISPATCH, VariantClear},
        },
    },
    core::{BSTR, Interface as _},
};

use super::{
    Backend, Error,
    model::{Ban, GrantKey, Ledger, PortGrant},
    windows_model::{self as wm, Connection, RuleSpec},
};
use crate::ports::PortSpec;

/// How long a snapshot of the TCP connection table is reused.
const CONNECTIONS_TTL: Duration = Duration::from_secs(1);

/// Windows Firewall failures.
#[derive(Debug, thiserror::Error)]
pub enum WinFwError {
    /// A COM call failed.
    #[error("{action}")]
    Com {
        /// What we were doing.
        action: String,
        /// The HRESULT.
        #[source]
        source: windows::core::Error,
    },
    /// The TCP table could not be read.
    #[error("reading the TCP connection table failed (error {0})")]
    TcpTable(u32),
    /// Windows Firewall took a rule but does not list it afterwards.
    #[error("Windows Firewall accepted rule {0:?} but does not list it: the rule is not in effect")]
    NotApplied(String),
}

fn com(action: impl Into<String>) -> impl FnOnce(windows::core::Error) -> WinFwError {
    let action = action.into();
    move |source| WinFwError::Com { action, source }
}

/// Initializes COM for this thread for the guard's lifetime.
struct ComGuard {
    uninit: bool,
}

impl ComGuard {
    fn new() -> Result<Self, WinFwError> {
        // SAFETY: no reserved pointer; balanced by CoUninitialize in Drop when it succeeded.
        let hr = unsafe { CoInitializeEx(None, COINIT_MULTITHREADED) };
        if hr == RPC_E_CHANGED_MODE {
            // The thread already has an apartment: use it as it is.
            return Ok(Self { uninit: false });
        }
        hr.ok().map_err(com("initializing COM"))?;
        Ok(Self { uninit: true })
    }
}

impl Drop for ComGuard {
    fn drop(&mut self) {
        if self.uninit {
            // SAFETY: balances the successful CoInitializeEx of this thread.
            unsafe { CoUninitialize() };
        }
    }
}

/// Runs `f` with the firewall's rule collection.
fn with_rules<T>(f: impl FnOnce(&INetFwRules) -> Result<T, WinFwError>) -> Result<T, WinFwError> {
    let _com = ComGuard::new()?;
    // SAFETY: COM is initialized on this thread; the class id is the documented NetFwPolicy2.
    let policy: INetFwPolicy2 =
        unsafe { CoCreateInstance(&NetFwPolicy2, None, CLSCTX_INPROC_SERVER) }.map_err(com(
            "opening Windows Firewall (is the service running? are we Administrator?)",
        ))?;
    // SAFETY: `policy` is a live interface.
    let rules = unsafe { policy.Rules() }.map_err(com("reading the firewall rules"))?;
    f(&rules)
}

fn add_rule(rules: &INetFwRules, spec: &RuleSpec) -> Result<(), WinFwError> {
    let err = || com(format!("adding rule {:?}", spec.name));
    // SAFETY: COM is initialized (we are inside `with_rules`); every setter copies its BSTR.
    unsafe {
        let rule: INetFwRule =
            CoCreateInstance(&NetFwRule, None, CLSCTX_INPROC_SERVER).map_err(err())?;
        rule.SetName(&BSTR::from(spec.name.as_str()))
            .map_err(err())?;
        rule.SetDescription(&BSTR::from(spec.description.as_str()))
            .map_err(err())?;
        rule.SetGrouping(&BSTR::from(wm::RULE_GROUP))
            .map_err(err())?;
        rule.SetDirection(NET_FW_RULE_DIR_IN).map_err(err())?;
        rule.SetAction(if spec.allow {
            NET_FW_ACTION_ALLOW
        } else {
            NET_FW_ACTION_BLOCK
        })
        .map_err(err())?;
        rule.SetProtocol(i32::from(spec.protocol.number()))
            .map_err(err())?;
        rule.SetLocalPorts(&BSTR::from(spec.local_ports.as_str()))
            .map_err(err())?;
        rule.SetRemoteAddresses(&BSTR::from(spec.remote_addresses.as_str()))
            .map_err(err())?;
        rule.SetProfiles(NET_FW_PROFILE2_ALL.0).map_err(err())?;
        rule.SetEnabled(VARIANT_TRUE).map_err(err())?;
        rules.Add(&rule).map_err(err())?;
    }
    Ok(())
}

fn rule_exists(rules: &INetFwRules, name: &str) -> bool {
    // SAFETY: COM is initialized; `Item` copies the name.
    unsafe { rules.Item(&BSTR::from(name)) }.is_ok()
}

/// Removes every rule called `name` (names are not unique in Windows Firewall). Without
/// `readback` (a firewall that cannot list rules) `Remove` is called once and its error, if
/// any, returned: nothing can tell whether the rule is there.
fn remove_rule(rules: &INetFwRules, name: &str, readback: bool) -> Result<(), WinFwError> {
    debug_assert!(wm::is_ours(name), "only our rules are removed");
    if !wm::is_ours(name) {
        return Ok(());
    }
    let bname = BSTR::from(name);
    if !readback {
        // SAFETY: COM is initialized; `Remove` copies the name.
        return unsafe { rules.Remove(&bname) }.map_err(com(format!("removing rule {name:?}")));
    }
    for _ in 0..16 {
        if !rule_exists(rules, name) {
            break;
        }
        // SAFETY: COM is initialized; `Remove` copies the name.
        unsafe { rules.Remove(&bname) }.map_err(com(format!("removing rule {name:?}")))?;
    }
    Ok(())
}

/// Names of all rules (ours are picked out by the caller).
fn rule_names(rules: &INetFwRules) -> Result<Vec<String>, WinFwError> {
    let mut names = Vec::new();
    // SAFETY: COM is initialized. Each fetched VARIANT is read only when it holds a dispatch
    // pointer (checked through `vt`) and is cleared (released) afterwards.
    unsafe {
        let unknown = rules
            ._NewEnum()
            .map_err(com("listing the firewall rules"))?;
        let enumerator: IEnumVARIANT = unknown.cast().map_err(com("listing the firewall rules"))?;
        loop {
            let mut items = [VARIANT::default()];
            let mut fetched = 0u32;
            let hr = enumerator.Next(&mut items, &raw mut fetched);
            if hr.is_err() || fetched == 0 {
                break;
            }
            let [item] = &mut items;
            let inner = &item.Anonymous.Anonymous;
            if inner.vt == VT_DISPATCH {
                let dispatch: &Option<IDispatch> = &inner.Anonymous.pdispVal;
                if let Some(rule) = dispatch.as_ref().and_then(|d| d.cast::<INetFwRule>().ok())
                    && let Ok(name) = rule.Name()
                {
                    names.push(name.to_string());
                }
            }
            let _ = VariantClear(item);
        }
    }
    Ok(names)
}

/// Established TCP connections (IPv4 and IPv6).
fn established() -> Result<Vec<Connection>, WinFwError> {
    let mut out = Vec::new();
    // SAFETY: the first call asks for the size; the buffer is then allocated as u32 words
    // (the row structs contain only 4-byte fields, so it is aligned for them) with room for
    // `size` bytes, and the entry count is checked against that size before reading rows.
    unsafe {
        let mut size = 0u32;
        let rc = GetTcpTable2(None, &raw mut size, false);
        if rc != ERROR_INSUFFICIENT_BUFFER.0 && rc != NO_ERROR.0 {
            return Err(WinFwError::TcpTable(rc));
        }
        let mut buf = vec![0u32; (size as usize).div_ceil(4).saturating_add(1)];
        let rc = GetTcpTable2(
            Some(buf.as_mut_ptr().cast::<MIB_TCPTABLE2>()),
            &raw mut size,
            false,
        );
        if rc != NO_ERROR.0 {
            return Err(WinFwError::TcpTable(rc));
        }
        let table = buf.as_ptr().cast::<MIB_TCPTABLE2>();
        let n = (*table).dwNumEntries as usize;
        let fits = n.saturating_mul(size_of::<MIB_TCPROW2>()).saturating_add(4) <= buf.len() * 4;
        if fits {
            let rows =
                std::slice::from_raw_parts((&raw const (*table).table).cast::<MIB_TCPROW2>(), n);
            for row in rows {
                if row.dwState == MIB_TCP_STATE_ESTAB.0 as u32 {
                    out.push(Connection {
                        remote: IpAddr::V4(wm::ipv4_from_dword(row.dwRemoteAddr)),
                        local_port: wm::port_from_dword(row.dwLocalPort),
                    });
                }
            }
        }

        let mut size = 0u32;
        let rc = GetTcp6Table2(std::ptr::null_mut(), &raw mut size, false);
        if rc != ERROR_INSUFFICIENT_BUFFER.0 && rc != NO_ERROR.0 {
            return Err(WinFwError::TcpTable(rc));
        }
        let mut buf = vec![0u32; (size as usize).div_ceil(4).saturating_add(1)];
        let rc = GetTcp6Table2(
            buf.as_mut_ptr().cast::<MIB_TCP6TABLE2>(),
            &raw mut size,
            false,
        );
        if rc != NO_ERROR.0 {
            return Err(WinFwError::TcpTable(rc));
        }
        let table = buf.as_ptr().cast::<MIB_TCP6TABLE2>();
        let n = (*table).dwNumEntries as usize;
        let fits = n
            .saturating_mul(size_of::<MIB_TCP6ROW2>())
            .saturating_add(4)
            <= buf.len() * 4;
        if fits {
            let rows =
                std::slice::from_raw_parts((&raw const (*table).table).cast::<MIB_TCP6ROW2>(), n);
            for row in rows {
                if row.State == MIB_TCP_STATE_ESTAB {
                    out.push(Connection {
                        remote: wm::ipv6_peer(row.RemoteAddr.u.Byte),
                        local_port: wm::port_from_dword(row.dwLocalPort),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Removes every rule named `capyknock ...` (`capyknock firewall remove`); returns how many.
pub fn remove_all_rules() -> Result<usize, WinFwError> {
    with_rules(|rules| {
        let ours: Vec<String> = rule_names(rules)?
            .into_iter()
            .filter(|n| wm::is_ours(n))
            .collect();
        for name in &ours {
            remove_rule(rules, name, true)?;
        }
        Ok(ours.len())
    })
}

/// The Windows Firewall backend.
#[derive(Debug)]
pub struct WindowsBackend {
    protected: Vec<PortSpec>,
    /// Names of the rules that should exist (for `is_intact`).
    expected: std::collections::BTreeSet<String>,
    /// Whether the firewall lists its rules. When it cannot (Wine's stub firewall; a broken
    /// firewall service), rules are added unverified and the start-up log says so.
    readback: bool,
    connections: Option<(Instant, Vec<Connection>)>,
}

impl WindowsBackend {
    /// A backend for the `protected` ports; checks that Windows Firewall can be opened.
    pub fn new(protected: &[PortSpec]) -> Result<Self, WinFwError> {
        with_rules(|_| Ok(()))?;
        let readback = match with_rules(rule_names) {
            Ok(_) => true,
            Err(err) => {
                tracing::error!(
                    error = %super::ErrorChain(&err),
                    "Windows Firewall cannot list its rules: capyknock adds its rules but cannot \
                     verify, repair or remove them, so grants and bans may not be in effect and \
                     expired ones may stay (Wine's firewall is a stub and does this; on Windows, \
                     check the Windows Defender Firewall service, mpssvc)"
                );
                false
            }
        };
        Ok(Self {
            protected: protected.to_vec(),
            expected: std::collections::BTreeSet::new(),
            connections: None,
            readback,
        })
    }

    fn ensure(&mut self, specs: &[RuleSpec]) -> Result<(), WinFwError> {
        let readback = self.readback;
        with_rules(|rules| {
            for spec in specs {
                if !rule_exists(rules, &spec.name) {
                    add_rule(rules, spec)?;
                    // Verified after applying: a rule the firewall does not list is not there.
                    if readback && !rule_exists(rules, &spec.name) {
                        return Err(WinFwError::NotApplied(spec.name.clone()));
                    }
                    if !readback {
                        tracing::warn!(
                            rule = %spec.name,
                            "Windows Firewall took the rule but cannot list rules: not verified"
                        );
                    }
                }
            }
            Ok(())
        })?;
        self.expected.extend(specs.iter().map(|s| s.name.clone()));
        Ok(())
    }

    fn remove(&mut self, names: &[String]) -> Result<(), WinFwError> {
        let readback = self.readback;
        with_rules(|rules| {
            for name in names {
                remove_rule(rules, name, readback)?;
            }
            Ok(())
        })?;
        for name in names {
            self.expected.remove(name);
        }
        Ok(())
    }
}

impl Backend for WindowsBackend {
    fn name(&self) -> &'static str {
        "windows"
    }

    fn expires_by_itself(&self) -> bool {
        false
    }

    fn persistent_ledger(&self) -> bool {
        true
    }

    fn add_grants(&mut self, grants: &[PortGrant], _now: SystemTime) -> Result<(), Error> {
        let specs: Vec<RuleSpec> = grants.iter().map(|g| wm::grant_rule(&g.key())).collect();
        Ok(self.ensure(&specs)?)
    }

    fn remove_grants(&mut self, keys: &[GrantKey]) -> Result<(), Error> {
        let names: Vec<String> = keys.iter().map(|k| wm::grant_rule(k).name).collect();
        Ok(self.remove(&names)?)
    }

    fn add_ban(&mut self, ban: &Ban, _now: SystemTime) -> Result<bool, Error> {
        let specs = wm::ban_rules(ban.addr, &self.protected);
        self.ensure(&specs)?;
        Ok(true)
    }

    fn remove_ban(&mut self, addr: IpAddr) -> Result<(), Error> {
        let names = [crate::ports::Protocol::Tcp, crate::ports::Protocol::Udp]
            .map(|p| wm::ban_rule_name(addr, p));
        Ok(self.remove(&names)?)
    }

    fn is_intact(&mut self) -> Result<bool, Error> {
        if !self.readback {
            // Nothing to compare with; the start-up log said so.
            return Ok(true);
        }
        let names = with_rules(rule_names)?;
        let present: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
        Ok(self.expected.iter().all(|n| present.contains(n.as_str())))
    }

    fn restore(&mut self, ledger: &Ledger, _now: SystemTime) -> Result<(), Error> {
        let desired = wm::desired_rules(ledger, &self.protected);
        if !self.readback {
            // Cannot see what is there: add what should be, remove nothing.
            self.ensure(&desired)?;
            self.expected = desired.into_iter().map(|r| r.name).collect();
            return Ok(());
        }
        with_rules(|rules| {
            let plan = wm::plan(&rule_names(rules)?, &desired);
            for name in &plan.remove {
                remove_rule(rules, name, true)?;
            }
            for spec in &plan.add {
                add_rule(rules, spec)?;
            }
            Ok(())
        })?;
        self.expected = desired.into_iter().map(|r| r.name).collect();
        Ok(())
    }

    fn in_use(&mut self, key: &GrantKey) -> bool {
        let fresh = self
            .connections
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < CONNECTIONS_TTL);
        if !fresh {
            match established() {
                Ok(list) => self.connections = Some((Instant::now(), list)),
                Err(err) => {
                    tracing::warn!(error = %super::ErrorChain(&err), "cannot list TCP connections");
                    return false;
                }
            }
        }
        self.connections
            .as_ref()
            .is_some_and(|(_, list)| wm::in_use(list, key))
    }

    fn remove_all(&mut self, _ledger: &Ledger) -> Result<(), Error> {
        remove_all_rules()?;
        self.expected.clear();
        Ok(())
    }
}
