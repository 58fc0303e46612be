//! Derived host-to-host relations: observed connections between two enrolled hosts become
//! `connects_to` relations the agents cannot report themselves (each agent sees one end).
//!
//! From the inventories of all hosts the collector keeps an index of
//! - the addresses each host owns (the `ipv4`/`ipv6` lists of its present
//!   `network_interface` CIs; loopback, unspecified, multicast and link-local addresses are
//!   left out, and an address owned by more than one host — a docker bridge, a VRRP address
//!   seen on both nodes — is ambiguous and resolves to nobody),
//! - the present TCP `listening_port` CIs (address, port),
//! - the present outbound TCP `connection` CIs (`remote_address`, `remote_port`; loopback
//!   and inbound ones are ignored: the inbound end is the other host's outbound one).
//!
//! A connection CI `C` on host A whose remote address is owned by exactly one other host B
//! gives two derived relations, both of kind `connects_to`, both with `host_id` = A:
//! - host A → host B (the host CIs), present while at least one such connection is;
//! - `C` → B's listening port `P` on that port (the one bound to the remote address, else a
//!   wildcard listener), when B reports one.
//!
//! Invariants:
//! - A derived relation is present iff its supporting connection(s) are present now and
//!   resolve as above. When the connection disappears (or the address changes hands, or the
//!   port closes) the relation is marked absent (`present: false`), never deleted, except
//!   to make room under the per-host cap below.
//! - Derived relations are stored as records of the record store (collection
//!   [`C_LINKS`]), not in the agents' relation index: `store/` is untouched and the agents'
//!   relations stay exactly what the agents reported. Each relation is two records, one per
//!   end (`<from>/o/<to>` and `<to>/i/<from>`, value = the JSON [`RelationRecord`]), so
//!   [`derived_relations_of`] finds them from either end with one prefix scan, and
//!   [`relations_of`] (used by `/api/v1/cis/{id}/relations` and the impact walk) merges
//!   them with the agents' ones.
//! - The task is driven by the store's change feed; its position is persisted (collection
//!   [`C_STATE`]) in the same atomic write as the relation changes it caused, so nothing is
//!   missed or applied twice across restarts. On start (and after a failed write) the index
//!   is rebuilt from the current CIs and every derived relation is re-checked against it.
//! - Bounded: at most [`MAX_LINKS_PER_HOST`] derived relations (present or absent) per
//!   source host (absent ones are evicted first; beyond that new ones are dropped and
//!   counted), at most [`MAX_ADDRESSES`] addresses in the index and
//!   [`MAX_ADDRESSES_PER_INTERFACE`] per interface, at most [`MAX_CONNECTIONS`] indexed
//!   connections, at most [`MAX_DERIVED_PER_CI`] derived relations read per CI.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cmdb_proto::model::{AttrValue, Attrs, class};

use crate::store::{
    CiFilter, CiId, CiState, FeedPos, HOST_CLASS, HostId, RecordOp, RelationRecord, Store,
    StoreError, host_ci_id,
};

/// Record collection of the derived relations (two records per relation).
pub const C_LINKS: &str = "host_links";
/// Record collection of the task's own state (the feed cursor).
pub const C_STATE: &str = "host_links_state";
/// The kind of every derived relation.
pub const KIND: &str = "connects_to";
/// Derived relations kept per source host (present or absent).
pub const MAX_LINKS_PER_HOST: usize = 4096;
/// Distinct addresses in the address index.
pub const MAX_ADDRESSES: usize = 1_000_000;
/// Addresses taken from one interface CI.
pub const MAX_ADDRESSES_PER_INTERFACE: usize = 64;
/// Outbound connections indexed.
pub const MAX_CONNECTIONS: usize = 4_000_000;
/// Derived relations read per CI by [`derived_relations_of`].
pub const MAX_DERIVED_PER_CI: usize = 20_000;
/// Feed entries handled per step.
pub const FEED_BATCH: usize = 4096;
/// How often the task looks at the feed when it is caught up.
pub const POLL: Duration = Duration::from_millis(200);
const PAGE: usize = 1000;

/// A failure of the host-link task.
#[derive(Debug, thiserror::Error)]
pub enum HostLinksError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One derived relation, by its ends (the kind is always [`KIND`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkKey {
    pub from: CiId,
    pub to: CiId,
}

/// What a connection resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    host: HostId,
    port: Option<CiId>,
}

#[derive(Clone, Debug)]
struct Conn {
    host: HostId,
    key: String,
    addr: IpAddr,
    port: u16,
    target: Option<Target>,
}

#[derive(Clone, Debug)]
struct Port {
    host: HostId,
    key: String,
    addr: IpAddr,
    port: u16,
}

/// What one touched link should look like, to build its record.
#[derive(Clone, Debug)]
struct LinkDraft {
    from_host: HostId,
    to_host: HostId,
    from_ref: String,
    to_ref: String,
    host_link: bool,
}

/// A change [`LinkIndex::settle`] made to the derived relations.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkWrite {
    /// Create or update (present flag) this relation.
    Put(RelationRecord),
    /// Delete this (absent) relation to make room under the per-host cap.
    Delete(LinkKey),
}

/// The in-memory index behind the derived relations (pure: no store). Feed it CI states
/// with the `set_*` methods, then [`LinkIndex::settle`] to get the relation changes.
#[derive(Default)]
pub struct LinkIndex {
    ifaces: HashMap<CiId, (HostId, Vec<IpAddr>)>,
    owners: HashMap<IpAddr, BTreeMap<HostId, u32>>,
    host_addrs: HashMap<HostId, BTreeMap<IpAddr, u32>>,
    ports: HashMap<CiId, Port>,
    ports_at: HashMap<(HostId, u16), BTreeSet<CiId>>,
    conns: HashMap<CiId, Conn>,
    conns_to: HashMap<IpAddr, BTreeSet<CiId>>,
    pairs: HashMap<(HostId, HostId), u32>,
    links: HashMap<LinkKey, RelationRecord>,
    links_of_host: HashMap<HostId, BTreeSet<LinkKey>>,
    dirty_conns: BTreeSet<CiId>,
    dirty_addrs: BTreeSet<IpAddr>,
    dirty_ports: BTreeSet<(HostId, u16)>,
    touched: BTreeMap<LinkKey, LinkDraft>,
    /// Links not created because their source host was at [`MAX_LINKS_PER_HOST`].
    pub dropped_links: u64,
    /// Addresses or connections not indexed because an index was full.
    pub dropped_index_entries: u64,
}

/// An address usable to tell hosts apart.
fn routable(ip: IpAddr) -> Option<IpAddr> {
    let ip = ip.to_canonical();
    let bad = ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || match ip {
            IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
    (!bad).then_some(ip)
}

/// `10.0.0.5/24` or `10.0.0.5` → the address.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let ip = s.split('/').next()?.trim();
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>().ok()
}

fn text<'a>(attrs: &'a Attrs, name: &str) -> Option<&'a str> {
    attrs.get(name).and_then(AttrValue::as_str)
}

fn port_of(attrs: &Attrs, name: &str) -> Option<u16> {
    attrs
        .get(name)
        .and_then(AttrValue::as_i64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

/// The routable addresses of a `network_interface` CI's attributes.
pub fn interface_addresses(attrs: &Attrs) -> Vec<IpAddr> {
    let mut out = BTreeSet::new();
    for list in ["ipv4", "ipv6"] {
        for v in attrs
            .get(list)
            .and_then(AttrValue::as_list)
            .unwrap_or_default()
        {
            if let Some(ip) = v.as_str().and_then(parse_addr).and_then(routable) {
                out.insert(ip);
            }
        }
    }
    out.into_iter().take(MAX_ADDRESSES_PER_INTERFACE).collect()
}

/// (address, port) of a TCP `listening_port` CI's attributes.
pub fn listening_endpoint(attrs: &Attrs) -> Option<(IpAddr, u16)> {
    if text(attrs, "protocol").is_some_and(|p| p != "tcp") {
        return None;
    }
    let addr = parse_addr(text(attrs, "address")?)?.to_canonical();
    Some((addr, port_of(attrs, "port")?))
}

/// (remote address, remote port) of an outbound, non-loopback TCP `connection` CI.
pub fn connection_endpoint(attrs: &Attrs) -> Option<(IpAddr, u16)> {
    if text(attrs, "protocol").is_some_and(|p| p != "tcp")
        || text(attrs, "direction").is_some_and(|d| d != "outbound")
    {
        return None;
    }
    let addr = routable(parse_addr(text(attrs, "remote_address")?)?)?;
    Some((addr, port_of(attrs, "remote_port")?))
}

fn bump<K: Ord>(m: &mut BTreeMap<K, u32>, k: K, up: bool) {
    if up {
        *m.entry(k).or_default() += 1;
    } else if let Some(n) = m.get_mut(&k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            m.remove(&k);
        }
    }
}

impl LinkIndex {
    /// Number of derived relations known (present or absent).
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Number of present derived relations.
    pub fn present_links(&self) -> usize {
        self.links.values().filter(|r| r.present).count()
    }

    /// The owner of `ip` when exactly one host owns it.
    pub fn owner_of(&self, ip: &IpAddr) -> Option<&HostId> {
        let owners = self.owners.get(ip)?;
        if owners.len() == 1 {
            owners.keys().next()
        } else {
            None
        }
    }

    /// The state of a `network_interface` CI (`None`: not present).
    pub fn set_interface(&mut self, id: &str, host: &str, addrs: Option<Vec<IpAddr>>) {
        if let Some((old_host, old)) = self.ifaces.remove(id) {
            for ip in old {
                if let Some(o) = self.owners.get_mut(&ip) {
                    bump(o, old_host.clone(), false);
                    if o.is_empty() {
                        self.owners.remove(&ip);
                    }
                }
                if let Some(h) = self.host_addrs.get_mut(&old_host) {
                    bump(h, ip, false);
                    if h.is_empty() {
                        self.host_addrs.remove(&old_host);
                    }
                }
                self.dirty_addrs.insert(ip);
            }
        }
        let Some(addrs) = addrs else { return };
        let mut kept = Vec::with_capacity(addrs.len());
        for ip in addrs.into_iter().take(MAX_ADDRESSES_PER_INTERFACE) {
            if !self.owners.contains_key(&ip) && self.owners.len() >= MAX_ADDRESSES {
                self.dropped_index_entries += 1;
                continue;
            }
            bump(self.owners.entry(ip).or_default(), host.to_owned(), true);
            bump(
                self.host_addrs.entry(host.to_owned()).or_default(),
                ip,
                true,
            );
            self.dirty_addrs.insert(ip);
            kept.push(ip);
        }
        self.ifaces.insert(id.to_owned(), (host.to_owned(), kept));
    }

    /// The state of a TCP `listening_port` CI (`None`: not present or not TCP).
    pub fn set_port(&mut self, id: &str, host: &str, key: &str, endpoint: Option<(IpAddr, u16)>) {
        if let Some(old) = self.ports.remove(id) {
            let at = (old.host.clone(), old.port);
            if let Some(s) = self.ports_at.get_mut(&at) {
                s.remove(id);
                if s.is_empty() {
                    self.ports_at.remove(&at);
                }
            }
            self.dirty_ports.insert(at);
        }
        let Some((addr, port)) = endpoint else { return };
        self.ports.insert(
            id.to_owned(),
            Port {
                host: host.to_owned(),
                key: key.to_owned(),
                addr,
                port,
            },
        );
        self.ports_at
            .entry((host.to_owned(), port))
            .or_default()
            .insert(id.to_owned());
        self.dirty_ports.insert((host.to_owned(), port));
    }

    /// The state of a `connection` CI (`None`: not present, inbound or loopback).
    pub fn set_connection(
        &mut self,
        id: &str,
        host: &str,
        key: &str,
        endpoint: Option<(IpAddr, u16)>,
    ) {
        if let Some(old) = self.conns.remove(id) {
            if let Some(s) = self.conns_to.get_mut(&old.addr) {
                s.remove(id);
                if s.is_empty() {
                    self.conns_to.remove(&old.addr);
                }
            }
            if let Some(t) = &old.target {
                self.release(id, &old, t);
            }
        }
        let Some((addr, port)) = endpoint else { return };
        if self.conns.len() >= MAX_CONNECTIONS {
            self.dropped_index_entries += 1;
            return;
        }
        self.conns.insert(
            id.to_owned(),
            Conn {
                host: host.to_owned(),
                key: key.to_owned(),
                addr,
                port,
                target: None,
            },
        );
        self.conns_to.entry(addr).or_default().insert(id.to_owned());
        self.dirty_conns.insert(id.to_owned());
    }

    /// A CI state from the store: dispatches on the class (others are ignored).
    pub fn set_ci(
        &mut self,
        id: &str,
        host: &str,
        class_name: &str,
        key: &str,
        attrs: Option<&Attrs>,
    ) {
        match class_name {
            class::NETWORK_INTERFACE => {
                self.set_interface(id, host, attrs.map(interface_addresses));
            }
            class::LISTENING_PORT => {
                self.set_port(id, host, key, attrs.and_then(listening_endpoint));
            }
            class::CONNECTION => {
                self.set_connection(id, host, key, attrs.and_then(connection_endpoint));
            }
            _ => {}
        }
    }

    /// Whether the index cares about CIs of this class.
    pub fn interesting(class_name: &str) -> bool {
        matches!(
            class_name,
            class::NETWORK_INTERFACE | class::LISTENING_PORT | class::CONNECTION
        )
    }

    /// A derived relation read back from the store at start.
    pub fn restore(&mut self, rec: RelationRecord) {
        let key = LinkKey {
            from: rec.from.clone(),
            to: rec.to.clone(),
        };
        self.links_of_host
            .entry(rec.host_id.clone())
            .or_default()
            .insert(key.clone());
        self.links.insert(key, rec);
    }

    /// Marks every known relation and every connection for re-checking (after a rebuild).
    pub fn recheck_all(&mut self) {
        let ids: Vec<CiId> = self.conns.keys().cloned().collect();
        self.dirty_conns.extend(ids);
        let keys: Vec<(LinkKey, RelationRecord)> = self
            .links
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        for (key, rec) in keys {
            let host_link = rec.from_ref.starts_with("host/");
            let to_host = rec
                .to_ref
                .strip_prefix("host/")
                .unwrap_or_default()
                .to_owned();
            self.touched.insert(
                key,
                LinkDraft {
                    from_host: rec.host_id.clone(),
                    to_host,
                    from_ref: rec.from_ref.clone(),
                    to_ref: rec.to_ref.clone(),
                    host_link,
                },
            );
        }
    }

    fn touch(&mut self, key: LinkKey, draft: LinkDraft) {
        self.touched.insert(key, draft);
    }

    fn host_draft(&self, from: &str, to: &str) -> (LinkKey, LinkDraft) {
        (
            LinkKey {
                from: host_ci_id(from),
                to: host_ci_id(to),
            },
            LinkDraft {
                from_host: from.to_owned(),
                to_host: to.to_owned(),
                from_ref: format!("{HOST_CLASS}/{from}"),
                to_ref: format!("{HOST_CLASS}/{to}"),
                host_link: true,
            },
        )
    }

    fn port_draft(&self, conn_id: &str, conn: &Conn, t: &Target) -> Option<(LinkKey, LinkDraft)> {
        let port_id = t.port.as_ref()?;
        let port = self.ports.get(port_id);
        Some((
            LinkKey {
                from: conn_id.to_owned(),
                to: port_id.clone(),
            },
            LinkDraft {
                from_host: conn.host.clone(),
                to_host: t.host.clone(),
                from_ref: format!("{}/{}", class::CONNECTION, conn.key),
                to_ref: format!(
                    "{}/{}",
                    class::LISTENING_PORT,
                    port.map(|p| p.key.as_str()).unwrap_or_default()
                ),
                host_link: false,
            },
        ))
    }

    /// Drops what `conn` (resolved to `t`) contributed.
    fn release(&mut self, conn_id: &str, conn: &Conn, t: &Target) {
        let pair = (conn.host.clone(), t.host.clone());
        if let Some(n) = self.pairs.get_mut(&pair) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pairs.remove(&pair);
            }
        }
        let (k, d) = self.host_draft(&conn.host, &t.host);
        self.touch(k, d);
        // The port may be gone already: rebuild the draft from the stored link if so.
        let key = t.port.as_ref().map(|p| LinkKey {
            from: conn_id.to_owned(),
            to: p.clone(),
        });
        if let Some(key) = key {
            if let Some((k, d)) = self.port_draft(conn_id, conn, t) {
                self.touch(k, d);
            } else if let Some(rec) = self.links.get(&key) {
                let d = LinkDraft {
                    from_host: rec.host_id.clone(),
                    to_host: t.host.clone(),
                    from_ref: rec.from_ref.clone(),
                    to_ref: rec.to_ref.clone(),
                    host_link: false,
                };
                self.touch(key, d);
            }
        }
    }

    fn resolve(&self, conn: &Conn) -> Option<Target> {
        let owner = self.owner_of(&conn.addr)?;
        if *owner == conn.host {
            return None;
        }
        let candidates = self.ports_at.get(&(owner.clone(), conn.port));
        let pick = |want_wildcard: bool| {
            candidates.and_then(|c| {
                c.iter()
                    .find(|id| {
                        self.ports.get(*id).is_some_and(|p| {
                            if want_wildcard {
                                p.addr.is_unspecified()
                            } else {
                                p.addr == conn.addr
                            }
                        })
                    })
                    .cloned()
            })
        };
        Some(Target {
            host: owner.clone(),
            port: pick(false).or_else(|| pick(true)),
        })
    }

    /// Re-resolves everything that may have changed and returns the relation changes, in
    /// a deterministic order. The index already reflects them.
    pub fn settle(&mut self) -> Vec<LinkWrite> {
        for ip in std::mem::take(&mut self.dirty_addrs) {
            if let Some(ids) = self.conns_to.get(&ip) {
                self.dirty_conns.extend(ids.iter().cloned());
            }
        }
        for (host, port) in std::mem::take(&mut self.dirty_ports) {
            let Some(addrs) = self.host_addrs.get(&host) else {
                continue;
            };
            for ip in addrs.keys() {
                if let Some(ids) = self.conns_to.get(ip) {
                    for id in ids {
                        if self.conns.get(id).is_some_and(|c| c.port == port) {
                            self.dirty_conns.insert(id.clone());
                        }
                    }
                }
            }
        }
        for id in std::mem::take(&mut self.dirty_conns) {
            let Some(conn) = self.conns.get(&id).cloned() else {
                continue;
            };
            let new = self.resolve(&conn);
            if new == conn.target {
                continue;
            }
            if let Some(old) = &conn.target {
                self.release(&id, &conn, old);
            }
            if let Some(t) = &new {
                *self
                    .pairs
                    .entry((conn.host.clone(), t.host.clone()))
                    .or_default() += 1;
                let (k, d) = self.host_draft(&conn.host, &t.host);
                self.touch(k, d);
                if let Some((k, d)) = self.port_draft(&id, &conn, t) {
                    self.touch(k, d);
                }
            }
            if let Some(c) = self.conns.get_mut(&id) {
                c.target = new;
            }
        }
        let mut out = Vec::new();
        for (key, draft) in std::mem::take(&mut self.touched) {
            let want = if draft.host_link {
                self.pairs
                    .get(&(draft.from_host.clone(), draft.to_host.clone()))
                    .is_some_and(|n| *n > 0)
            } else {
                self.conns
                    .get(&key.from)
                    .and_then(|c| c.target.as_ref())
                    .and_then(|t| t.port.as_ref())
                    == Some(&key.to)
            };
            match self.links.get_mut(&key) {
                Some(rec) if rec.present != want => {
                    rec.present = want;
                    out.push(LinkWrite::Put(rec.clone()));
                }
                Some(_) => {}
                None if want => self.create(key, draft, &mut out),
                None => {}
            }
        }
        out
    }

    fn create(&mut self, key: LinkKey, draft: LinkDraft, out: &mut Vec<LinkWrite>) {
        let mine = self
            .links_of_host
            .entry(draft.from_host.clone())
            .or_default();
        if mine.len() >= MAX_LINKS_PER_HOST {
            let evict = mine
                .iter()
                .find(|k| self.links.get(*k).is_some_and(|r| !r.present))
                .cloned();
            match evict {
                Some(k) => {
                    mine.remove(&k);
                    self.links.remove(&k);
                    out.push(LinkWrite::Delete(k));
                }
                None => {
                    self.dropped_links += 1;
                    return;
                }
            }
        }
        mine.insert(key.clone());
        let rec = RelationRecord {
            from: key.from.clone(),
            to: key.to.clone(),
            kind: KIND.to_owned(),
            host_id: draft.from_host,
            present: true,
            from_ref: draft.from_ref,
            to_ref: draft.to_ref,
        };
        self.links.insert(key, rec.clone());
        out.push(LinkWrite::Put(rec));
    }
}

fn out_id(from: &str, to: &str) -> String {
    format!("{from}/o/{to}")
}

fn in_id(to: &str, from: &str) -> String {
    format!("{to}/i/{from}")
}

/// The record writes of `writes`.
pub fn record_ops(writes: &[LinkWrite]) -> Vec<RecordOp> {
    let mut ops = Vec::with_capacity(writes.len() * 2);
    for w in writes {
        match w {
            LinkWrite::Put(rec) => {
                let value = serde_json::to_vec(rec).unwrap_or_default();
                ops.push(RecordOp::Put {
                    collection: C_LINKS,
                    id: out_id(&rec.from, &rec.to),
                    value: value.clone(),
                });
                ops.push(RecordOp::Put {
                    collection: C_LINKS,
                    id: in_id(&rec.to, &rec.from),
                    value,
                });
            }
            LinkWrite::Delete(k) => {
                ops.push(RecordOp::Delete {
                    collection: C_LINKS,
                    id: out_id(&k.from, &k.to),
                });
                ops.push(RecordOp::Delete {
                    collection: C_LINKS,
                    id: in_id(&k.to, &k.from),
                });
            }
        }
    }
    ops
}

fn decode(id: &str, value: &[u8]) -> Result<RelationRecord, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: format!("{C_LINKS}/{id}"),
        reason: e.to_string(),
    })
}

/// The derived relations with `id` at either end (at most [`MAX_DERIVED_PER_CI`]).
pub fn derived_relations_of(
    store: &dyn Store,
    id: &str,
) -> Result<Vec<RelationRecord>, StoreError> {
    let prefix = format!("{id}/");
    let mut after = prefix.clone();
    let mut out = Vec::new();
    'pages: loop {
        let page = store.records(C_LINKS, Some(&after), PAGE)?;
        let full = page.len() == PAGE;
        for (rid, value) in page {
            if !rid.starts_with(&prefix) || out.len() >= MAX_DERIVED_PER_CI {
                break 'pages;
            }
            out.push(decode(&rid, &value)?);
            after = rid;
        }
        if !full {
            break;
        }
    }
    Ok(out)
}

/// The agents' relations of `id` followed by the derived ones.
pub fn relations_of(store: &dyn Store, id: &str) -> Result<Vec<RelationRecord>, StoreError> {
    let mut all = store.relations_of(id)?;
    all.extend(derived_relations_of(store, id)?);
    Ok(all)
}

struct Inner {
    index: LinkIndex,
    cursor: Option<FeedPos>,
    loaded: bool,
}

/// The host-link task: follows the change feed and keeps the derived relations.
pub struct HostLinks {
    store: Arc<dyn Store>,
    inner: Mutex<Inner>,
}

impl HostLinks {
    /// The task over `store`; the index is built on the first [`HostLinks::step`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            inner: Mutex::new(Inner {
                index: LinkIndex::default(),
                cursor: None,
                loaded: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (present, known) derived relations.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.index.present_links(), st.index.link_count())
    }

    /// Rebuilds the index from the current CIs and the stored relations, and writes what
    /// re-checking every relation changed. Returns the number of relation changes.
    pub fn rebuild(&self) -> Result<usize, HostLinksError> {
        let mut st = self.lock();
        st.loaded = false;
        self.load(&mut st)
    }

    fn load(&self, st: &mut Inner) -> Result<usize, HostLinksError> {
        let store = self.store.as_ref();
        st.cursor = match store.record(C_STATE, "cursor")? {
            Some(v) => Some(serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: format!("{C_STATE}/cursor"),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let mut index = LinkIndex::default();
        let mut after: Option<String> = None;
        loop {
            let page = store.records(C_LINKS, after.as_deref(), PAGE)?;
            let full = page.len() == PAGE;
            for (rid, value) in page {
                if rid.contains("/o/") {
                    index.restore(decode(&rid, &value)?);
                }
                after = Some(rid);
            }
            if !full {
                break;
            }
        }
        for class_name in [
            class::NETWORK_INTERFACE,
            class::LISTENING_PORT,
            class::CONNECTION,
        ] {
            let mut after: Option<CiId> = None;
            loop {
                let page = store.cis(&CiFilter {
                    class: Some(class_name.to_owned()),
                    limit: PAGE,
                    after: after.clone(),
                    ..CiFilter::default()
                })?;
                let full = page.len() >= PAGE;
                for ci in &page {
                    if ci.state == CiState::Present {
                        index.set_ci(&ci.id, &ci.host_id, &ci.class, &ci.key, Some(&ci.attrs));
                    }
                }
                match page.last() {
                    Some(last) if full => after = Some(last.id.clone()),
                    _ => break,
                }
            }
        }
        index.recheck_all();
        let writes = index.settle();
        if !writes.is_empty() {
            store.write_records(&record_ops(&writes))?;
        }
        st.index = index;
        st.loaded = true;
        Ok(writes.len())
    }

    /// Handles the next feed entries. Returns how many (0: caught up).
    pub fn step(&self) -> Result<usize, HostLinksError> {
        let mut st = self.lock();
        if !st.loaded {
            self.load(&mut st)?;
        }
        let store = self.store.as_ref();
        // Heads only: the entry's contents are not used (the current CI is read below).
        let entries = store.feed_heads(st.cursor.as_ref(), FEED_BATCH)?;
        let Some(last) = entries.last() else {
            return Ok(0);
        };
        let last = last.pos.clone();
        let mut seen = BTreeSet::new();
        for e in &entries {
            if !LinkIndex::interesting(&e.class) || !seen.insert(e.pos.ci_id.clone()) {
                continue;
            }
            // The current state, not the entry's: replays after a restart never regress.
            let ci = store.ci(&e.pos.ci_id)?;
            let attrs = ci
                .as_ref()
                .filter(|c| c.state == CiState::Present)
                .map(|c| &c.attrs);
            st.index
                .set_ci(&e.pos.ci_id, &e.host_id, &e.class, &e.key, attrs);
        }
        let writes = st.index.settle();
        let mut ops = record_ops(&writes);
        ops.push(RecordOp::Put {
            collection: C_STATE,
            id: "cursor".to_owned(),
            value: serde_json::to_vec(&last).unwrap_or_default(),
        });
        // Derived work: agents' applies and acks go first while they keep coming.
        store.wait_for_idle_writers();
        if let Err(e) = store.write_records(&ops) {
            // The index is ahead of the store now: rebuild it on the next step.
            st.loaded = false;
            return Err(e.into());
        }
        if writes.iter().any(|w| matches!(w, LinkWrite::Put(_))) {
            tracing::debug!(changes = writes.len(), "Derived host links updated.");
        }
        st.cursor = Some(last);
        Ok(entries.len())
    }

    /// The task loop: drains the feed on `worker`, polls when caught up; failures are
    /// logged and retried with a growing pause.
    pub async fn run(self: Arc<Self>, worker: crate::background::Worker) {
        let mut failures = 0u32;
        loop {
            let me = Arc::clone(&self);
            let step = worker
                .run(move || {
                    let mut handled = 0;
                    loop {
                        let n = me.step()?;
                        handled += n;
                        if n == 0 || handled >= 50_000 {
                            return Ok::<_, HostLinksError>(handled);
                        }
                    }
                })
                .await;
            let busy = match step {
                Ok(Ok(n)) => {
                    failures = 0;
                    n > 0
                }
                Ok(Err(e)) => {
                    failures = failures.saturating_add(1);
                    tracing::error!(error = %e, failures, "Deriving host links failed; retrying.");
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e, "The host-link task failed; retrying.");
                    false
                }
            };
            if !busy {
                tokio::time::sleep(POLL * failures.clamp(1, 50)).await;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
