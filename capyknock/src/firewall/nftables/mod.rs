//! nftables backend: our own table, driven through netlink with the `nftnl` crate (libnftnl),
//! every change one atomic batch.
//!
//! ```text
//! table inet capyknock {
//!   set allow4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }
//!   set allow6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }
//!   set ban4   { type ipv4_addr; flags timeout; }
//!   set ban6   { type ipv6_addr; flags timeout; }
//!   chain input {                                   # hook input, priority 0, policy accept
//!     meta l4proto tcp th dport 22 jump guard       # one rule per protected port
//!     meta l4proto udp th dport 62201 counter drop  # one rule per knock port
//!   }
//!   chain guard {
//!     ip saddr @ban4 counter drop                   # a ban beats everything below
//!     ip6 saddr @ban6 counter drop
//!     ct state established,related accept           # open sessions survive grant expiry
//!     ip saddr . meta l4proto . th dport @allow4 accept
//!     ip6 saddr . meta l4proto . th dport @allow6 accept
//!     counter drop
//!   }
//! }
//! ```
//!
//! A grant is an element of `allow4`/`allow6` whose kernel timeout is the time left, so access
//! closes even if the daemon dies. A refresh is sent as add, delete, add of the same elements in
//! one batch: the first add makes sure the element exists (it is non-exclusive), so the delete
//! cannot fail, and the last add sets the new timeout on every kernel version. Opening never
//! flushes the sets: the table, chains and sets are created if missing (existing ones are kept
//! with their elements), the two chains' rules are replaced, and the result is listed back and
//! compared with what it should be. Only our table is ever read or written.

#[allow(
    unsafe_code,
    reason = "libnftnl's C API: the one FFI module of the nftables backend"
)]
pub mod raw;

use std::{
    ffi::{CStr, CString},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use nftnl::{
    Batch, Chain, ChainType, Hook, MsgType, NlMsg, Policy, ProtoFamily, Rule, Table,
    expr::{Bitwise, Cmp, CmpOp, Conntrack, Counter, Lookup, Meta, Verdict, ct::States},
    nftnl_sys::libc,
    set::{Set, SetKey},
};

use self::raw::{
    ElemList, FAMILY_INET, HOOK_INPUT, Load, MAX_ELEMS_PER_MSG, META_L4PROTO, NFPROTO_IPV4,
    NFPROTO_IPV6, Netlink, NetlinkError, PAYLOAD_NETWORK, PAYLOAD_TRANSPORT, REG_1, REG32_00,
    SET_TIMEOUT,
};
use super::{
    Backend, Error,
    model::{Ban, GrantKey, Ledger, Owner, PortGrant, ceil_millis},
};
use crate::ports::{PortSpec, Protocol};

const INPUT: &CStr = c"input";
const GUARD: &CStr = c"guard";
const ALLOW4: &CStr = c"allow4";
const ALLOW6: &CStr = c"allow6";
const BAN4: &CStr = c"ban4";
const BAN6: &CStr = c"ban6";

/// Rules in the guard chain (see the module docs).
const GUARD_RULES: usize = 6;

/// nftables datatype ids (nftables `include/datatype.h`), for set key types that `nft list`
/// can print.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
/// Bits per datatype in a concatenated type id.
const TYPE_BITS: u32 = 6;

const fn concat3(a: u32, b: u32, c: u32) -> u32 {
    (((a << TYPE_BITS) | b) << TYPE_BITS) | c
}

/// Key of `allow4`: `ipv4_addr . inet_proto . inet_service`, each field padded to 4 bytes.
struct Allow4Key;
impl SetKey for Allow4Key {
    const TYPE: u32 = concat3(TYPE_IPADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE);
    const LEN: u32 = 12;
    fn data(&self) -> Box<[u8]> {
        Box::new([])
    }
}

/// Key of `allow6`: `ipv6_addr . inet_proto . inet_service`.
struct Allow6Key;
impl SetKey for Allow6Key {
    const TYPE: u32 = concat3(TYPE_IP6ADDR, TYPE_INET_PROTOCOL, TYPE_INET_SERVICE);
    const LEN: u32 = 24;
    fn data(&self) -> Box<[u8]> {
        Box::new([])
    }
}

/// nftables backend errors.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// A netlink request failed.
    #[error("{action}")]
    Netlink {
        /// What we were doing.
        action: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
}

fn nl_err(action: impl Into<String>) -> impl FnOnce(NetlinkError) -> NftError {
    let action = action.into();
    move |source| {
        let action = if source.errno() == Some(libc::EPERM) {
            format!("{action} (permission denied: needs root or CAP_NET_ADMIN)")
        } else {
            action
        };
        NftError::Netlink { action, source }
    }
}

/// Encodes a grant as an `allow4`/`allow6` key: which set, and the key bytes.
fn allow_key(key: &GrantKey) -> (&'static CStr, Vec<u8>) {
    let mut bytes = match key.addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes.extend_from_slice(&[key.protocol.number(), 0, 0, 0]);
    let [hi, lo] = key.port.to_be_bytes();
    bytes.extend_from_slice(&[hi, lo, 0, 0]);
    let set = if key.addr.is_ipv4() { ALLOW4 } else { ALLOW6 };
    (set, bytes)
}

/// Decodes an `allow4`/`allow6` key; `None` for anything we would not have written.
fn parse_allow_key(bytes: &[u8]) -> Option<GrantKey> {
    let (addr, rest): (IpAddr, &[u8]) = match bytes.len() {
        12 => {
            let (a, rest) = bytes.split_at(4);
            (
                IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(a).ok()?)),
                rest,
            )
        }
        24 => {
            let (a, rest) = bytes.split_at(16);
            (
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(a).ok()?)),
                rest,
            )
        }
        _ => return None,
    };
    let [proto, 0, 0, 0, hi, lo, 0, 0] = <[u8; 8]>::try_from(rest).ok()? else {
        return None;
    };
    let protocol = match proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        _ => return None,
    };
    let port = u16::from_be_bytes([hi, lo]);
    (port != 0).then_some(GrantKey {
        addr,
        protocol,
        port,
    })
}

fn ban_key(addr: IpAddr) -> (&'static CStr, Vec<u8>) {
    match addr {
        IpAddr::V4(a) => (BAN4, a.octets().to_vec()),
        IpAddr::V6(a) => (BAN6, a.octets().to_vec()),
    }
}

fn parse_ban_key(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).ok()?,
        ))),
        _ => None,
    }
}

/// An element to add: key bytes, timeout, user data (the owner's comment, for grants).
struct Elem {
    key: Vec<u8>,
    timeout_ms: Option<u64>,
    userdata: Option<Vec<u8>>,
}

/// A batch with a description of every message, for errors.
struct Tx {
    batch: Batch,
    labels: Vec<String>,
}

impl Tx {
    fn new() -> Self {
        Self {
            batch: Batch::new(),
            labels: Vec::new(),
        }
    }

    fn add(&mut self, msg: &impl NlMsg, ty: MsgType, label: impl Into<String>) {
        self.batch.add(msg, ty);
        self.labels.push(label.into());
    }

    /// Adds, deletes and re-adds elements: creates missing ones, and sets the timeout of
    /// existing ones on every kernel version (see the module docs).
    fn refresh(&mut self, table: &CStr, set: &CStr, items: &[Elem]) {
        for chunk in items.chunks(MAX_ELEMS_PER_MSG) {
            let mut list = ElemList::new(table, set, FAMILY_INET);
            for e in chunk {
                list.push(&e.key, e.timeout_ms, e.userdata.as_deref());
            }
            let label = format!(
                "{} element(s) for set {}",
                chunk.len(),
                set.to_string_lossy()
            );
            self.add(&list, MsgType::Add, format!("adding {label}"));
            self.add(&list, MsgType::Del, format!("replacing {label}"));
            self.add(&list, MsgType::Add, format!("re-adding {label}"));
        }
    }

    /// Adds then deletes elements, so deleting one that is not there (expired meanwhile)
    /// cannot fail.
    fn remove(&mut self, table: &CStr, set: &CStr, keys: &[Vec<u8>]) {
        for chunk in keys.chunks(MAX_ELEMS_PER_MSG) {
            let mut list = ElemList::new(table, set, FAMILY_INET);
            for key in chunk {
                list.push(key, None, None);
            }
            let label = format!(
                "{} element(s) of set {}",
                chunk.len(),
                set.to_string_lossy()
            );
            self.add(&list, MsgType::Add, format!("marking {label}"));
            self.add(&list, MsgType::Del, format!("deleting {label}"));
        }
    }

    fn send(self, nl: &mut Netlink) -> Result<(), NetlinkError> {
        if self.labels.is_empty() {
            return Ok(());
        }
        let batch = self.batch.finalize();
        nl.send_batch(&batch, &self.labels)
    }
}

/// The nftables backend.
#[derive(Debug)]
pub struct NftBackend {
    nl: Netlink,
    table: CString,
    table_name: String,
    priority: i32,
    protected: Vec<PortSpec>,
    knock_ports: Vec<u16>,
}

impl NftBackend {
    /// Opens a netlink socket (in the calling thread's network namespace) for table
    /// `inet <table>`. Nothing is changed until the facade calls `restore`.
    pub fn new(
        table: &str,
        priority: i32,
        protected: &[PortSpec],
        knock_ports: &[u16],
    ) -> Result<Self, NftError> {
        let nl = Netlink::open().map_err(nl_err("opening a netlink socket to nftables"))?;
        let mut protected = protected.to_vec();
        protected.sort_unstable();
        protected.dedup();
        let mut knock_ports: Vec<u16> = knock_ports.iter().copied().filter(|p| *p != 0).collect();
        knock_ports.sort_unstable();
        knock_ports.dedup();
        Ok(Self {
            nl,
            table: raw::name(table),
            table_name: table.to_owned(),
            priority,
            protected,
            knock_ports,
        })
    }

    fn table_exists(&mut self) -> Result<Option<u32>, NftError> {
        let tables = self
            .nl
            .tables()
            .map_err(nl_err("listing nftables tables"))?;
        Ok(tables
            .into_iter()
            .find(|(name, _)| *name == self.table_name)
            .map(|(_, flags)| flags))
    }

    /// Adds table, chains, sets (kept if they exist) and our rules (replacing the chains'
    /// rules) to `tx`.
    fn add_structure(&self, tx: &mut Tx, table: &Table) {
        let t = &self.table_name;
        tx.add(table, MsgType::Add, format!("creating table inet {t}"));

        let mut input = Chain::new(INPUT, table);
        input.set_hook(Hook::In, self.priority);
        input.set_type(ChainType::Filter);
        input.set_policy(Policy::Accept);
        tx.add(
            &input,
            MsgType::Add,
            format!("creating chain inet {t} input"),
        );
        let guard = Chain::new(GUARD, table);
        tx.add(
            &guard,
            MsgType::Add,
            format!("creating chain inet {t} guard"),
        );

        let allow4 = Set::<Allow4Key>::new_named(ALLOW4, 1, table, ProtoFamily::Inet);
        let allow6 = Set::<Allow6Key>::new_named(ALLOW6, 2, table, ProtoFamily::Inet);
        let ban4 = Set::<Ipv4Addr>::new_named(BAN4, 3, table, ProtoFamily::Inet);
        let ban6 = Set::<Ipv6Addr>::new_named(BAN6, 4, table, ProtoFamily::Inet);
        raw::set_flags(&allow4, SET_TIMEOUT);
        raw::set_flags(&allow6, SET_TIMEOUT);
        raw::set_flags(&ban4, SET_TIMEOUT);
        raw::set_flags(&ban6, SET_TIMEOUT);
        tx.add(&allow4, MsgType::Add, "creating set allow4");
        tx.add(&allow6, MsgType::Add, "creating set allow6");
        tx.add(&ban4, MsgType::Add, "creating set ban4");
        tx.add(&ban6, MsgType::Add, "creating set ban6");

        // Replace the rules: a rule without a handle, sent as a delete, flushes its chain.
        tx.add(&Rule::new(&input), MsgType::Del, "flushing chain input");
        tx.add(&Rule::new(&guard), MsgType::Del, "flushing chain guard");

        for spec in &self.protected {
            let mut r = Rule::new(&input);
            match_port(&mut r, spec.protocol, spec.port);
            r.add_expr(&Verdict::Jump {
                chain: GUARD.to_owned(),
            });
            tx.add(&r, MsgType::Add, format!("adding the rule for {spec}"));
        }
        for port in &self.knock_ports {
            let mut r = Rule::new(&input);
            match_port(&mut r, Protocol::Udp, *port);
            r.add_expr(&Counter);
            r.add_expr(&Verdict::Drop);
            tx.add(
                &r,
                MsgType::Add,
                format!("adding the drop rule for knock port udp/{port}"),
            );
        }

        add_guard_rules(tx, &guard, [&allow4, &allow6, &ban4, &ban6]);
    }

    /// Adds every live grant and ban of `ledger` to `tx`.
    fn add_ledger(&self, tx: &mut Tx, ledger: &Ledger, now: SystemTime) {
        let grants: Vec<PortGrant> = ledger.grants().collect();
        self.add_grant_elems(tx, &grants, now);
        for ban in ledger.bans() {
            self.add_ban_elem(tx, &ban, now);
        }
    }

    fn add_grant_elems(&self, tx: &mut Tx, grants: &[PortGrant], now: SystemTime) {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for g in grants {
            let Some(left) = g.remaining(now) else {
                continue;
            };
            let (set, key) = allow_key(&g.key());
            let item = Elem {
                key,
                timeout_ms: Some(ceil_millis(left)),
                userdata: g.owner.and_then(|o| raw::comment_userdata(&o.to_comment())),
            };
            if set == ALLOW4 {
                v4.push(item);
            } else {
                v6.push(item);
            }
        }
        tx.refresh(&self.table, ALLOW4, &v4);
        tx.refresh(&self.table, ALLOW6, &v6);
    }

    fn add_ban_elem(&self, tx: &mut Tx, ban: &Ban, now: SystemTime) {
        let timeout = match ban.remaining(now) {
            None => return,
            Some(None) => None,
            Some(Some(left)) => Some(ceil_millis(left)),
        };
        let (set, key) = ban_key(ban.addr);
        tx.refresh(
            &self.table,
            set,
            &[Elem {
                key,
                timeout_ms: timeout,
                userdata: None,
            }],
        );
    }

    fn send(&mut self, tx: Tx, action: &str) -> Result<(), NftError> {
        tx.send(&mut self.nl).map_err(nl_err(format!(
            "{action} in table inet {}",
            self.table_name
        )))
    }

    /// Deletes and recreates the whole table, then fills it from the ledger: for tables whose
    /// objects conflict with ours (left by another version, or edited by hand).
    fn recreate(&mut self, ledger: &Ledger, now: SystemTime, exists: bool) -> Result<(), NftError> {
        let table = Table::new(&self.table, ProtoFamily::Inet);
        let mut tx = Tx::new();
        if exists {
            tx.add(
                &table,
                MsgType::Del,
                format!("deleting table inet {}", self.table_name),
            );
        }
        self.add_structure(&mut tx, &table);
        self.add_ledger(&mut tx, ledger, now);
        self.send(tx, "recreating our rules")
    }
}

/// A set a lookup expression can reference.
trait LookupTarget {
    fn lookup(&self) -> Lookup;
}

impl<K> LookupTarget for Set<'_, K> {
    fn lookup(&self) -> Lookup {
        Lookup::new(self)
    }
}

/// The guard chain's rules (see the module docs), in order.
fn add_guard_rules(tx: &mut Tx, guard: &Chain<'_>, sets: [&dyn LookupTarget; 4]) {
    let [allow4, allow6, ban4, ban6] = sets;
    let reg32 = |n: u32| REG32_00 + n;

    // Bans first: a banned address is dropped even with a grant or an open connection.
    for (nfproto, offset, len, set) in [(NFPROTO_IPV4, 12, 4, ban4), (NFPROTO_IPV6, 8, 16, ban6)] {
        let mut r = Rule::new(guard);
        r.add_expr(&Meta::NfProto);
        r.add_expr(&Cmp::new(CmpOp::Eq, nfproto));
        r.add_expr(&Load::Payload {
            base: PAYLOAD_NETWORK,
            offset,
            len,
            dreg: REG_1,
        });
        r.add_expr(&set.lookup());
        r.add_expr(&Counter);
        r.add_expr(&Verdict::Drop);
        tx.add(&r, MsgType::Add, "adding the ban rules");
    }

    let mut r = Rule::new(guard);
    r.add_expr(&Conntrack::State);
    r.add_expr(&Bitwise::new(
        (States::ESTABLISHED | States::RELATED).bits(),
        0u32,
    ));
    r.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
    r.add_expr(&Verdict::Accept);
    tx.add(&r, MsgType::Add, "adding the established-connection rule");

    // saddr . l4proto . dport in 32-bit registers 0.. (v4: 0, 1, 2; v6: 0-3, 4, 5).
    for (nfproto, offset, len, proto_reg, port_reg, set) in [
        (NFPROTO_IPV4, 12, 4, 1, 2, allow4),
        (NFPROTO_IPV6, 8, 16, 4, 5, allow6),
    ] {
        let mut r = Rule::new(guard);
        r.add_expr(&Meta::NfProto);
        r.add_expr(&Cmp::new(CmpOp::Eq, nfproto));
        r.add_expr(&Load::Payload {
            base: PAYLOAD_NETWORK,
            offset,
            len,
            dreg: reg32(0),
        });
        r.add_expr(&Load::Meta {
            key: META_L4PROTO,
            dreg: reg32(proto_reg),
        });
        r.add_expr(&Load::Payload {
            base: PAYLOAD_TRANSPORT,
            offset: 2,
            len: 2,
            dreg: reg32(port_reg),
        });
        r.add_expr(&set.lookup());
        r.add_expr(&Verdict::Accept);
        tx.add(&r, MsgType::Add, "adding the grant rules");
    }

    let mut r = Rule::new(guard);
    r.add_expr(&Counter);
    r.add_expr(&Verdict::Drop);
    tx.add(&r, MsgType::Add, "adding the final drop rule");
}

/// `meta l4proto PROTO th dport PORT`.
fn match_port(r: &mut Rule<'_>, protocol: Protocol, port: u16) {
    r.add_expr(&Meta::L4Proto);
    r.add_expr(&Cmp::new(CmpOp::Eq, protocol.number()));
    r.add_expr(&Load::Payload {
        base: PAYLOAD_TRANSPORT,
        offset: 2,
        len: 2,
        dreg: REG_1,
    });
    r.add_expr(&Cmp::new(CmpOp::Eq, &port.to_be_bytes()[..]));
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

    fn atomic(&self) -> bool {
        true
    }

    fn installed(&mut self, now: SystemTime) -> Result<Option<Ledger>, Error> {
        let mut ledger = Ledger::new();
        if self.table_exists()?.is_none() {
            return Ok(Some(ledger));
        }
        let present: Vec<String> = self
            .nl
            .sets(&self.table)
            .map_err(nl_err("listing our sets"))?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let has = |set: &CStr| present.iter().any(|p| p.as_bytes() == set.to_bytes());
        for set in [ALLOW4, ALLOW6] {
            if !has(set) {
                continue;
            }
            let elems = self
                .nl
                .elements(&self.table, set)
                .map_err(nl_err(format!("listing set {}", set.to_string_lossy())))?;
            for e in elems {
                if let (Some(key), Some(ms)) = (parse_allow_key(&e.key), e.expires_ms) {
                    let owner = e
                        .userdata
                        .as_deref()
                        .and_then(raw::userdata_comment)
                        .and_then(|c| Owner::from_comment(&c));
                    ledger.insert_grant(key.grant(now + Duration::from_millis(ms), owner), now);
                } else {
                    tracing::debug!(set = %set.to_string_lossy(), "ignoring an element capyknock did not write");
                }
            }
        }
        for set in [BAN4, BAN6] {
            if !has(set) {
                continue;
            }
            let elems = self
                .nl
                .elements(&self.table, set)
                .map_err(nl_err(format!("listing set {}", set.to_string_lossy())))?;
            for e in elems {
                if let Some(addr) = parse_ban_key(&e.key) {
                    let until = e.expires_ms.map(|ms| now + Duration::from_millis(ms));
                    ledger.insert_ban(Ban { addr, until }, now);
                }
            }
        }
        Ok(Some(ledger))
    }

    fn add_grants(&mut self, grants: &[PortGrant], now: SystemTime) -> Result<(), Error> {
        let mut tx = Tx::new();
        self.add_grant_elems(&mut tx, grants, now);
        Ok(self.send(tx, "granting access")?)
    }

    fn remove_grants(&mut self, keys: &[GrantKey]) -> Result<(), Error> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for k in keys {
            let (set, key) = allow_key(k);
            if set == ALLOW4 {
                v4.push(key);
            } else {
                v6.push(key);
            }
        }
        let mut tx = Tx::new();
        tx.remove(&self.table, ALLOW4, &v4);
        tx.remove(&self.table, ALLOW6, &v6);
        Ok(self.send(tx, "revoking access")?)
    }

    fn add_ban(&mut self, ban: &Ban, now: SystemTime) -> Result<bool, Error> {
        let mut tx = Tx::new();
        self.add_ban_elem(&mut tx, ban, now);
        self.send(tx, "banning")?;
        Ok(true)
    }

    fn remove_ban(&mut self, addr: IpAddr) -> Result<(), Error> {
        let (set, key) = ban_key(addr);
        let mut tx = Tx::new();
        tx.remove(&self.table, set, &[key]);
        Ok(self.send(tx, "unbanning")?)
    }

    fn is_intact(&mut self) -> Result<bool, Error> {
        match self.table_exists()? {
            Some(0) => {}
            Some(_) => {
                tracing::warn!(table = %self.table_name, "our nftables table has flags set (dormant?)");
                return Ok(false);
            }
            None => return Ok(false),
        }
        let mut chains = self
            .nl
            .chains(&self.table)
            .map_err(nl_err("listing our chains"))?;
        chains.sort_by(|a, b| a.name.cmp(&b.name));
        let want_chains = [
            raw::ChainInfo {
                name: "guard".to_owned(),
                hook: None,
            },
            raw::ChainInfo {
                name: "input".to_owned(),
                hook: Some((HOOK_INPUT, self.priority)),
            },
        ];
        if chains != want_chains {
            tracing::debug!(?chains, "chains differ");
            return Ok(false);
        }
        let mut sets = self
            .nl
            .sets(&self.table)
            .map_err(nl_err("listing our sets"))?;
        sets.sort_by(|a, b| a.name.cmp(&b.name));
        let sets: Vec<(String, u32, u32)> = sets
            .into_iter()
            .map(|s| (s.name, s.flags & SET_TIMEOUT, s.key_len))
            .collect();
        let want_sets = [
            ("allow4".to_owned(), SET_TIMEOUT, Allow4Key::LEN),
            ("allow6".to_owned(), SET_TIMEOUT, Allow6Key::LEN),
            ("ban4".to_owned(), SET_TIMEOUT, 4),
            ("ban6".to_owned(), SET_TIMEOUT, 16),
        ];
        if sets != want_sets {
            tracing::debug!(?sets, "sets differ");
            return Ok(false);
        }
        let rules = self
            .nl
            .rules(&self.table)
            .map_err(nl_err("listing our rules"))?;
        let input = rules.iter().filter(|c| *c == "input").count();
        let guard = rules.iter().filter(|c| *c == "guard").count();
        let want_input = self.protected.len().saturating_add(self.knock_ports.len());
        if input != want_input || guard != GUARD_RULES || rules.len() != input.saturating_add(guard)
        {
            tracing::debug!(input, guard, total = rules.len(), "rules differ");
            return Ok(false);
        }
        Ok(true)
    }

    fn restore(&mut self, ledger: &Ledger, now: SystemTime) -> Result<(), Error> {
        let exists = self.table_exists()?.is_some();
        if exists {
            let table = Table::new(&self.table, ProtoFamily::Inet);
            let mut tx = Tx::new();
            self.add_structure(&mut tx, &table);
            self.add_ledger(&mut tx, ledger, now);
            match self.send(tx, "setting up our rules") {
                Ok(()) => {
                    if self.is_intact()? {
                        return Ok(());
                    }
                    tracing::warn!(
                        table = %self.table_name,
                        "our nftables table holds objects capyknock did not create; recreating it (grants are kept)"
                    );
                }
                Err(NftError::Netlink {
                    source: NetlinkError::Refused { what, source },
                    ..
                }) => {
                    tracing::warn!(
                        table = %self.table_name,
                        refused = %what,
                        error = %source,
                        "our nftables table conflicts with the rules capyknock wants; recreating it (grants are kept)"
                    );
                }
                Err(other) => return Err(other.into()),
            }
        }
        Ok(self.recreate(ledger, now, exists)?)
    }

    fn remove_all(&mut self, _ledger: &Ledger) -> Result<(), Error> {
        remove_table_with(&mut self.nl, &self.table, &self.table_name)?;
        Ok(())
    }
}

/// Deletes table `inet <table>` and everything in it (`capyknock firewall remove`). Returns
/// false when it did not exist. No other table is touched.
pub fn remove_table(table: &str) -> Result<bool, NftError> {
    let mut nl = Netlink::open().map_err(nl_err("opening a netlink socket to nftables"))?;
    remove_table_with(&mut nl, &raw::name(table), table)
}

fn remove_table_with(nl: &mut Netlink, table: &CStr, name: &str) -> Result<bool, NftError> {
    let tables = nl.tables().map_err(nl_err("listing nftables tables"))?;
    if !tables.iter().any(|(t, _)| t == name) {
        return Ok(false);
    }
    let mut tx = Tx::new();
    tx.add(
        &Table::new(table, ProtoFamily::Inet),
        MsgType::Del,
        format!("deleting table inet {name}"),
    );
    match tx.send(nl) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(nl_err(format!("deleting table inet {name}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_keys_round_trip_and_match_the_register_layout() {
        let k = GrantKey {
            addr: "192.0.2.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 22,
        };
        let (set, bytes) = allow_key(&k);
        assert_eq!(set, ALLOW4);
        // addr | l4proto in its own 32-bit register | dport (network order) in its own.
        assert_eq!(bytes, [192, 0, 2, 1, 6, 0, 0, 0, 0, 22, 0, 0]);
        assert_eq!(bytes.len() as u32, Allow4Key::LEN);
        assert_eq!(parse_allow_key(&bytes), Some(k));

        let k6 = GrantKey {
            addr: "2001:db8::1".parse().unwrap(),
            protocol: Protocol::Udp,
            port: 51820,
        };
        let (set, bytes) = allow_key(&k6);
        assert_eq!(set, ALLOW6);
        assert_eq!(bytes.len() as u32, Allow6Key::LEN);
        assert_eq!(&bytes[16..], &[17, 0, 0, 0, 0xca, 0x6c, 0, 0]);
        assert_eq!(parse_allow_key(&bytes), Some(k6));
    }

    #[test]
    fn foreign_keys_are_not_parsed() {
        assert_eq!(parse_allow_key(&[]), None);
        assert_eq!(parse_allow_key(&[1; 12]), None);
        assert_eq!(
            parse_allow_key(&[192, 0, 2, 1, 47, 0, 0, 0, 0, 22, 0, 0]),
            None,
            "GRE"
        );
        assert_eq!(
            parse_allow_key(&[192, 0, 2, 1, 6, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "port 0"
        );
        assert_eq!(parse_ban_key(&[1, 2, 3]), None);
        assert_eq!(
            parse_ban_key(&[10, 0, 0, 1]),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn concatenated_type_ids_match_nft() {
        // `nft` prints these sets as `ipv4_addr . inet_proto . inet_service` only with these ids.
        assert_eq!(Allow4Key::TYPE, 29453);
        assert_eq!(Allow6Key::TYPE, 33549);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = parse_allow_key(&bytes);
            let _ = parse_ban_key(&bytes);
        }
    }
}
