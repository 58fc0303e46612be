//! The normalised software index and the compliance position computed from it.
//!
//! [`IndexBuilder`] takes the store's present `package`, `cpu` and `user` CIs one at a
//! time (a streaming scan: nothing per install is kept) and folds them into a
//! [`SoftwareIndex`]: per host its physical cores and interactive users, per normalised
//! product its installs, distinct hosts (sorted host numbers) and versions; plus the
//! deny-listed installs and the unapproved products the lists found on the way. The index
//! is bounded: [`MAX_PRODUCTS`] products (further unmatched package names are counted, not
//! kept), [`MAX_VERSIONS`] versions per product, [`MAX_DENIED`] denied installs.
//!
//! [`position`] is pure: entitlements × index → one row per (vendor, product, edition,
//! metric) of the entitlements, plus one `unlicensed` row per licensable product that no
//! entitlement names. Consumption per metric:
//! - `per-install`: package CIs of the product (two architectures of one package are two);
//! - `per-host`: distinct hosts with the product;
//! - `per-core`: the sum over those hosts of the cpu CI's `cores` — the agent counts
//!   distinct (socket, core) pairs, so it is all physical cores of all sockets; a host
//!   without a cpu CI counts its `logical_cpus`, and 1 when both are missing;
//! - `per-user`: the sum over those hosts of interactive user accounts (user CIs with uid
//!   >= 1000, a login shell and not a system account), at least 1 per host.
//!
//! An entitlement with an empty edition covers every edition of its product. Expired
//! entitlements count nothing (they are listed under `expired`); those ending within the
//! expiry window count and are listed under `expiring`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use cmdb_proto::model::AttrValue;
use serde::{Deserialize, Serialize};

use super::entitlements::{Entitlement, Metric};
use super::lists::{ListMatcher, Verdict};
use super::normalise::{Normalised, Normaliser, Product};
use crate::store::CiRecord;

/// Most distinct products kept in the index.
pub const MAX_PRODUCTS: usize = 200_000;
/// Most distinct versions kept per product.
pub const MAX_VERSIONS: usize = 32;
/// Most deny-listed installs kept (one alert each).
pub const MAX_DENIED: usize = 10_000;
/// Most hosts listed per position row.
pub const MAX_HOSTS_LISTED: usize = 10_000;

/// What the index knows about one host.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    pub host_id: String,
    pub hostname: Option<String>,
    pub cores: Option<u64>,
    pub logical_cpus: Option<u64>,
    pub users: u64,
}

impl HostFacts {
    fn cores(&self) -> u64 {
        self.cores.or(self.logical_cpus).unwrap_or(1).max(1)
    }
}

/// Installs of one normalised product.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub installs: u64,
    /// Host numbers (indices into [`SoftwareIndex::hosts`]), sorted, distinct.
    pub hosts: Vec<u32>,
    pub versions: BTreeSet<String>,
    pub matched: bool,
    pub licensable: bool,
    pub metric: Metric,
}

/// A deny-listed install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedInstall {
    pub host_id: String,
    pub ci_id: String,
    /// The package CI's key (`<manager>:<name>:<arch>`).
    pub package_key: String,
    pub vendor: String,
    pub product: String,
    pub reason: String,
}

/// Software not on a non-empty allow list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unapproved {
    pub vendor: String,
    pub product: String,
    pub edition: String,
    pub packages: BTreeSet<String>,
    pub installs: u64,
    pub hosts: u64,
}

/// The normalised software inventory of the whole fleet at one moment.
#[derive(Clone, Debug, Default)]
pub struct SoftwareIndex {
    pub built_at: Option<SystemTime>,
    pub hosts: Vec<HostFacts>,
    pub products: BTreeMap<Product, Usage>,
    pub denied: Vec<DeniedInstall>,
    /// Denied installs beyond [`MAX_DENIED`] (not alerted).
    pub denied_overflow: u64,
    pub unapproved: Vec<Unapproved>,
    pub packages_scanned: u64,
    /// Package CIs of products beyond [`MAX_PRODUCTS`] (counted nowhere else).
    pub products_overflow: u64,
}

/// Folds CIs into a [`SoftwareIndex`].
pub struct IndexBuilder<'a> {
    normaliser: &'a Normaliser,
    lists: &'a ListMatcher,
    host_no: HashMap<String, u32>,
    index: SoftwareIndex,
    unapproved: BTreeMap<Product, (Unapproved, BTreeSet<u32>)>,
    /// Normalisations by package name, then package vendor: most names repeat on every
    /// host, and a lookup by `&str` allocates nothing.
    cache: HashMap<String, Vec<(Option<String>, Normalised)>>,
    cached: usize,
}

fn attr_str<'c>(ci: &'c CiRecord, name: &str) -> Option<&'c str> {
    match ci.attrs.get(name) {
        Some(AttrValue::Str(s)) => Some(s.as_str()),
        _ => None,
    }
}

fn attr_u64(ci: &CiRecord, name: &str) -> Option<u64> {
    match ci.attrs.get(name) {
        Some(AttrValue::Int(i)) => u64::try_from(*i).ok(),
        Some(AttrValue::Float(f)) if *f >= 0.0 && f.is_finite() => Some(*f as u64),
        _ => None,
    }
}

fn attr_bool(ci: &CiRecord, name: &str) -> Option<bool> {
    match ci.attrs.get(name) {
        Some(AttrValue::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// Most distinct (name, vendor) pairs whose normalisation is cached during one build.
const MAX_CACHE: usize = 100_000;

impl<'a> IndexBuilder<'a> {
    pub fn new(normaliser: &'a Normaliser, lists: &'a ListMatcher) -> Self {
        IndexBuilder {
            normaliser,
            lists,
            host_no: HashMap::new(),
            index: SoftwareIndex::default(),
            unapproved: BTreeMap::new(),
            cache: HashMap::new(),
            cached: 0,
        }
    }

    fn host(&mut self, host_id: &str) -> u32 {
        if let Some(n) = self.host_no.get(host_id) {
            return *n;
        }
        let n = u32::try_from(self.index.hosts.len()).unwrap_or(u32::MAX);
        self.index.hosts.push(HostFacts {
            host_id: host_id.to_owned(),
            ..HostFacts::default()
        });
        self.host_no.insert(host_id.to_owned(), n);
        n
    }

    fn facts(&mut self, host_id: &str) -> Option<&mut HostFacts> {
        let n = self.host(host_id) as usize;
        self.index.hosts.get_mut(n)
    }

    /// The hostname of a host (from its agent).
    pub fn hostname(&mut self, host_id: &str, hostname: Option<String>) {
        if let Some(f) = self.facts(host_id) {
            f.hostname = hostname;
        }
    }

    /// A `cpu` CI.
    pub fn add_cpu(&mut self, ci: &CiRecord) {
        let cores = attr_u64(ci, "cores");
        let logical = attr_u64(ci, "logical_cpus");
        if let Some(f) = self.facts(&ci.host_id) {
            f.cores = cores;
            f.logical_cpus = logical;
        }
    }

    /// A `user` CI: counted when interactive.
    pub fn add_user(&mut self, ci: &CiRecord) {
        let uid = attr_u64(ci, "uid").unwrap_or(0);
        let login = attr_bool(ci, "login_shell").unwrap_or(false);
        let system = attr_bool(ci, "system_account").unwrap_or(uid < 1000);
        if uid >= 1000
            && login
            && !system
            && let Some(f) = self.facts(&ci.host_id)
        {
            f.users += 1;
        }
    }

    /// A `package` CI.
    pub fn add_package(&mut self, ci: &CiRecord) {
        self.index.packages_scanned += 1;
        let name = attr_str(ci, "name").unwrap_or(ci.key.as_str());
        let vendor = attr_str(ci, "vendor");
        let hit = self
            .cache
            .get(name)
            .and_then(|list| list.iter().find(|(v, _)| v.as_deref() == vendor))
            .map(|(_, n)| n.clone());
        let Normalised {
            product,
            matched,
            licensable,
            metric,
        } = match hit {
            Some(n) => n,
            None => {
                let n = self.normaliser.normalise(name, vendor);
                if self.cached < MAX_CACHE {
                    self.cached += 1;
                    self.cache
                        .entry(name.to_owned())
                        .or_default()
                        .push((vendor.map(str::to_owned), n.clone()));
                }
                n
            }
        };
        let host = self.host(&ci.host_id);
        match self.lists.verdict(&product, name) {
            Verdict::Allowed => {}
            Verdict::Denied(reason) => {
                if self.index.denied.len() < MAX_DENIED {
                    self.index.denied.push(DeniedInstall {
                        host_id: ci.host_id.clone(),
                        ci_id: ci.id.clone(),
                        package_key: ci.key.clone(),
                        vendor: product.vendor.clone(),
                        product: product.product.clone(),
                        reason,
                    });
                } else {
                    self.index.denied_overflow += 1;
                }
            }
            Verdict::Unapproved => {
                if self.unapproved.len() < MAX_PRODUCTS || self.unapproved.contains_key(&product) {
                    let (u, hosts) = self.unapproved.entry(product.clone()).or_default();
                    u.installs += 1;
                    if u.packages.len() < MAX_VERSIONS {
                        u.packages.insert(name.to_owned());
                    }
                    hosts.insert(host);
                }
            }
        }
        let version = attr_str(ci, "version");
        if !self.index.products.contains_key(&product) && self.index.products.len() >= MAX_PRODUCTS
        {
            self.index.products_overflow += 1;
            return;
        }
        let u = self.index.products.entry(product).or_insert_with(|| Usage {
            matched,
            licensable,
            metric,
            ..Usage::default()
        });
        u.installs += 1;
        if u.hosts.last() != Some(&host) {
            u.hosts.push(host);
        }
        if let Some(v) = version
            && u.versions.len() < MAX_VERSIONS
            && !u.versions.contains(v)
        {
            u.versions.insert(v.to_owned());
        }
    }

    pub fn finish(mut self, now: SystemTime) -> SoftwareIndex {
        for u in self.index.products.values_mut() {
            u.hosts.sort_unstable();
            u.hosts.dedup();
        }
        self.index.unapproved = self
            .unapproved
            .into_iter()
            .map(|(p, (mut u, hosts))| {
                u.vendor = p.vendor;
                u.product = p.product;
                u.edition = p.edition;
                u.hosts = hosts.len() as u64;
                u
            })
            .collect();
        self.index.built_at = Some(now);
        self.index
    }
}

/// One row of `GET /api/v1/licenses/software`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftwareRow {
    pub vendor: String,
    pub product: String,
    pub edition: String,
    pub versions: Vec<String>,
    pub installs: u64,
    pub hosts: u64,
    /// Physical cores of those hosts.
    pub cores: u64,
    /// Interactive users of those hosts.
    pub users: u64,
    /// A normalisation rule matched (false: the package's own name and vendor).
    pub normalised: bool,
    pub licensable: bool,
}

/// The inventory, optionally only rule-matched (`normalised_only`) products.
pub fn software(index: &SoftwareIndex, normalised_only: bool) -> Vec<SoftwareRow> {
    index
        .products
        .iter()
        .filter(|(_, u)| u.matched || !normalised_only)
        .map(|(p, u)| SoftwareRow {
            vendor: p.vendor.clone(),
            product: p.product.clone(),
            edition: p.edition.clone(),
            versions: u.versions.iter().cloned().collect(),
            installs: u.installs,
            hosts: u.hosts.len() as u64,
            cores: sum_hosts(index, &u.hosts, HostFacts::cores),
            users: sum_hosts(index, &u.hosts, |h| h.users),
            normalised: u.matched,
            licensable: u.licensable,
        })
        .collect()
}

fn sum_hosts(index: &SoftwareIndex, hosts: &[u32], f: impl Fn(&HostFacts) -> u64) -> u64 {
    hosts
        .iter()
        .filter_map(|h| index.hosts.get(*h as usize))
        .map(f)
        .sum()
}

/// A host of a position row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRef {
    pub host_id: String,
    pub hostname: Option<String>,
    /// What this host consumes under the row's metric.
    pub consumed: u64,
}

/// An entitlement as listed in a position row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntitlementRef {
    pub contract: String,
    pub quantity: u64,
    pub expires: Option<String>,
}

/// Compliance status of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Entitled = consumed.
    Compliant,
    /// Consumed > entitled (> 0).
    Shortfall,
    /// Entitled > consumed.
    Surplus,
    /// Installed with no valid entitlement.
    Unlicensed,
}

/// One row of `GET /api/v1/licenses/position`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionRow {
    pub vendor: String,
    pub product: String,
    /// Empty: all editions.
    pub edition: String,
    pub metric: Metric,
    pub entitled: u64,
    pub consumed: u64,
    /// entitled − consumed (negative: shortfall).
    pub balance: i64,
    pub status: Status,
    pub installs: u64,
    pub host_count: u64,
    /// The consuming hosts, by host id, at most the request's `hosts_limit`.
    pub hosts: Vec<HostRef>,
    pub hosts_truncated: bool,
    /// Valid entitlements counted in `entitled`.
    pub entitlements: Vec<EntitlementRef>,
    /// Counted, but ending within the expiry window.
    pub expiring: Vec<EntitlementRef>,
    /// Not counted any more.
    pub expired: Vec<EntitlementRef>,
}

fn lc(s: &str) -> String {
    s.trim().to_lowercase()
}

/// The compliance position (see the module doc). `hosts_limit` bounds each row's list.
pub fn position(
    index: &SoftwareIndex,
    entitlements: &[Entitlement],
    now: SystemTime,
    window: Duration,
    hosts_limit: usize,
) -> Vec<PositionRow> {
    // (vendor, product) lowercased → products (all editions) in the index.
    let mut by_name: HashMap<(String, String), Vec<(&Product, &Usage)>> = HashMap::new();
    for (p, u) in &index.products {
        by_name
            .entry((lc(&p.vendor), lc(&p.product)))
            .or_default()
            .push((p, u));
    }
    // Group entitlements by (vendor, product, edition, metric), lowercased, keeping the
    // first spelling for display.
    type Group<'e> = (&'e Entitlement, Vec<&'e Entitlement>);
    let mut groups: BTreeMap<(String, String, String, Metric), Group<'_>> = BTreeMap::new();
    for e in entitlements {
        groups
            .entry((lc(&e.vendor), lc(&e.product), lc(&e.edition), e.metric))
            .or_insert_with(|| (e, Vec::new()))
            .1
            .push(e);
    }
    let mut rows = Vec::with_capacity(groups.len());
    let mut covered: BTreeSet<(String, String, String)> = BTreeSet::new();
    for ((v, p, ed, metric), (first, ents)) in &groups {
        let products: Vec<(&Product, &Usage)> = by_name
            .get(&(v.clone(), p.clone()))
            .map(|list| {
                list.iter()
                    .filter(|(prod, _)| ed.is_empty() || lc(&prod.edition) == *ed)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for (prod, _) in &products {
            covered.insert((v.clone(), p.clone(), lc(&prod.edition)));
        }
        let mut row = consumption(index, &products, *metric, hosts_limit);
        row.vendor = first.vendor.clone();
        row.product = first.product.clone();
        row.edition = first.edition.clone();
        for e in ents {
            let r = EntitlementRef {
                contract: e.contract.clone(),
                quantity: e.quantity,
                expires: e.expires.clone(),
            };
            if e.expired(now) {
                row.expired.push(r);
                continue;
            }
            row.entitled = row.entitled.saturating_add(e.quantity);
            if e.expiring(now, window) {
                row.expiring.push(r.clone());
            }
            row.entitlements.push(r);
        }
        finish_row(&mut row);
        rows.push(row);
    }
    // Licensable products that no entitlement names.
    for (prod, u) in &index.products {
        if !u.licensable
            || covered.contains(&(lc(&prod.vendor), lc(&prod.product), lc(&prod.edition)))
        {
            continue;
        }
        let mut row = consumption(index, &[(prod, u)], u.metric, hosts_limit);
        row.vendor = prod.vendor.clone();
        row.product = prod.product.clone();
        row.edition = prod.edition.clone();
        finish_row(&mut row);
        rows.push(row);
    }
    rows.sort_by(|a, b| {
        (lc(&a.vendor), lc(&a.product), lc(&a.edition), a.metric).cmp(&(
            lc(&b.vendor),
            lc(&b.product),
            lc(&b.edition),
            b.metric,
        ))
    });
    rows
}

fn finish_row(row: &mut PositionRow) {
    let entitled = i64::try_from(row.entitled).unwrap_or(i64::MAX);
    let consumed = i64::try_from(row.consumed).unwrap_or(i64::MAX);
    row.balance = entitled.saturating_sub(consumed);
    row.status = if row.entitlements.is_empty() && row.consumed > 0 {
        Status::Unlicensed
    } else if row.balance < 0 {
        Status::Shortfall
    } else if row.balance > 0 {
        Status::Surplus
    } else {
        Status::Compliant
    };
}

/// Installs, hosts and consumption of some products (editions of one product) together.
fn consumption(
    index: &SoftwareIndex,
    products: &[(&Product, &Usage)],
    metric: Metric,
    hosts_limit: usize,
) -> PositionRow {
    let installs: u64 = products.iter().map(|(_, u)| u.installs).sum();
    // Installs per host only matter for per-install; the union of sorted lists otherwise.
    let mut hosts: Vec<u32> = if products.len() == 1 {
        products[0].1.hosts.clone()
    } else {
        let mut all: Vec<u32> = products
            .iter()
            .flat_map(|(_, u)| u.hosts.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    };
    let per_host = |h: &HostFacts| match metric {
        Metric::PerInstall | Metric::PerHost => 1,
        Metric::PerCore => h.cores(),
        Metric::PerUser => h.users.max(1),
    };
    let consumed = match metric {
        Metric::PerInstall => installs,
        _ => sum_hosts(index, &hosts, per_host),
    };
    let host_count = hosts.len() as u64;
    let limit = hosts_limit.min(MAX_HOSTS_LISTED);
    let truncated = hosts.len() > limit;
    hosts.truncate(limit);
    let hosts = hosts
        .iter()
        .filter_map(|h| index.hosts.get(*h as usize))
        .map(|h| HostRef {
            host_id: h.host_id.clone(),
            hostname: h.hostname.clone(),
            consumed: per_host(h),
        })
        .collect();
    PositionRow {
        vendor: String::new(),
        product: String::new(),
        edition: String::new(),
        metric,
        entitled: 0,
        consumed,
        balance: 0,
        status: Status::Compliant,
        installs,
        host_count,
        hosts,
        hosts_truncated: truncated,
        entitlements: Vec::new(),
        expiring: Vec::new(),
        expired: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cmdb_proto::model::Attrs;

    use super::super::lists::Lists;
    use super::super::normalise::RuleSet;
    use super::*;
    use crate::store::CiState;

    pub fn ci(host: &str, class: &str, key: &str, attrs: &[(&str, AttrValue)]) -> CiRecord {
        let attrs: Attrs = attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        CiRecord {
            id: crate::store::ci_id(host, class, key),
            host_id: host.into(),
            class: class.into(),
            key: key.into(),
            state: CiState::Present,
            attrs,
            version: 1,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
            last_changed: SystemTime::UNIX_EPOCH,
            source_agent: "agt-x".into(),
            source_seq: 1,
        }
    }

    fn pkg(host: &str, name: &str) -> CiRecord {
        ci(
            host,
            "package",
            &format!("dpkg:{name}:amd64"),
            &[
                ("name", AttrValue::Str(name.into())),
                ("version", AttrValue::Str("1.0".into())),
            ],
        )
    }

    fn day(s: &str) -> SystemTime {
        super::super::entitlements::parse_day(s).unwrap()
    }

    fn ent(
        contract: &str,
        product: &str,
        metric: Metric,
        q: u64,
        exp: Option<&str>,
    ) -> Entitlement {
        Entitlement {
            contract: contract.into(),
            vendor: "Microsoft".into(),
            product: product.into(),
            edition: String::new(),
            metric,
            quantity: q,
            expires: exp.map(str::to_owned),
            notes: String::new(),
        }
    }

    /// Three hosts with SQL Server (two Enterprise, one Standard), 4 + 8 + 16 cores;
    /// Teams on two hosts with 3 and 0 interactive users; TeamViewer on one host.
    fn fleet() -> SoftwareIndex {
        let nz = Normaliser::new(&RuleSet::default(), true);
        let lm = ListMatcher::new(&Lists::default());
        let mut b = IndexBuilder::new(&nz, &lm);
        for (h, cores) in [("h1", 4), ("h2", 8), ("h3", 16)] {
            b.hostname(h, Some(format!("{h}.example")));
            b.add_cpu(&ci(h, "cpu", "cpu", &[("cores", AttrValue::Int(cores))]));
        }
        b.add_package(&pkg("h1", "mssql-server-enterprise"));
        b.add_package(&pkg("h2", "mssql-server-enterprise"));
        b.add_package(&pkg("h3", "mssql-server-standard"));
        b.add_package(&pkg("h1", "teams"));
        b.add_package(&pkg("h2", "teams"));
        b.add_package(&pkg("h3", "teamviewer"));
        b.add_package(&pkg("h3", "bash"));
        for u in ["alice", "bob", "carol"] {
            b.add_user(&ci(
                "h1",
                "user",
                u,
                &[
                    ("uid", AttrValue::Int(1001)),
                    ("login_shell", AttrValue::Bool(true)),
                    ("system_account", AttrValue::Bool(false)),
                ],
            ));
        }
        b.add_user(&ci(
            "h2",
            "user",
            "daemon",
            &[
                ("uid", AttrValue::Int(1)),
                ("login_shell", AttrValue::Bool(false)),
            ],
        ));
        b.finish(day("2030-01-01"))
    }

    #[test]
    fn a_known_shortfall() {
        let idx = fleet();
        let now = day("2030-01-01");
        let ents = vec![
            ent(
                "EA-1",
                "SQL Server",
                Metric::PerCore,
                20,
                Some("2030-02-01"),
            ),
            ent(
                "EA-0",
                "SQL Server",
                Metric::PerCore,
                100,
                Some("2029-12-31"),
            ),
            ent("EA-2", "Teams", Metric::PerUser, 10, None),
        ];
        let rows = position(&idx, &ents, now, Duration::from_secs(60 * 86_400), 100);
        let sql = rows.iter().find(|r| r.product == "SQL Server").unwrap();
        // 4 + 8 + 16 cores across both editions; the expired 100 do not count.
        assert_eq!(sql.consumed, 28);
        assert_eq!(sql.entitled, 20);
        assert_eq!(sql.balance, -8);
        assert_eq!(sql.status, Status::Shortfall);
        assert_eq!(sql.host_count, 3);
        assert_eq!(sql.expired.len(), 1);
        assert_eq!(sql.expiring.len(), 1);
        assert_eq!(sql.hosts[2].consumed, 16);
        let teams = rows.iter().find(|r| r.product == "Teams").unwrap();
        // h1: 3 users; h2: none interactive, counted as 1.
        assert_eq!(teams.consumed, 4);
        assert_eq!(teams.status, Status::Surplus);
        let tv = rows.iter().find(|r| r.product == "TeamViewer").unwrap();
        assert_eq!(tv.status, Status::Unlicensed);
        assert_eq!(tv.consumed, 1);
        assert!(!rows.iter().any(|r| r.product == "bash"));
    }

    #[test]
    fn an_edition_entitlement_counts_only_its_edition() {
        let idx = fleet();
        let mut e = ent("EA-3", "sql server", Metric::PerHost, 2, None);
        e.edition = "enterprise".into();
        let rows = position(&idx, &[e], day("2030-01-01"), Duration::ZERO, 1);
        let ent_row = rows.iter().find(|r| r.edition == "enterprise").unwrap();
        assert_eq!(ent_row.consumed, 2);
        assert_eq!(ent_row.status, Status::Compliant);
        assert!(ent_row.hosts_truncated);
        // The Standard edition is licensable and not covered.
        let std_row = rows.iter().find(|r| r.edition == "Standard").unwrap();
        assert_eq!(std_row.status, Status::Unlicensed);
        assert_eq!(std_row.metric, Metric::PerCore);
        assert_eq!(std_row.consumed, 16);
    }

    #[test]
    fn software_groups_by_product() {
        let idx = fleet();
        let rows = software(&idx, false);
        let sql: Vec<_> = rows.iter().filter(|r| r.product == "SQL Server").collect();
        assert_eq!(sql.len(), 2);
        assert_eq!(sql[0].cores + sql[1].cores, 28);
        assert!(rows.iter().any(|r| r.product == "bash" && !r.normalised));
        assert!(!software(&idx, true).iter().any(|r| r.product == "bash"));
    }

    #[test]
    fn lists_find_denied_and_unapproved() {
        let nz = Normaliser::new(&RuleSet::default(), true);
        let lists: Lists = serde_json::from_str(
            r#"{"allow":[{"vendor":"Microsoft"}],"deny":[{"package":"teamviewer*","reason":"banned"}]}"#,
        )
        .unwrap();
        let lm = ListMatcher::new(&lists);
        let mut b = IndexBuilder::new(&nz, &lm);
        b.add_package(&pkg("h1", "teamviewer"));
        b.add_package(&pkg("h1", "teams"));
        b.add_package(&pkg("h1", "bash"));
        b.add_package(&pkg("h2", "bash"));
        let idx = b.finish(SystemTime::UNIX_EPOCH);
        assert_eq!(idx.denied.len(), 1);
        assert_eq!(idx.denied[0].package_key, "dpkg:teamviewer:amd64");
        assert_eq!(idx.denied[0].reason, "banned");
        assert_eq!(idx.unapproved.len(), 1);
        assert_eq!(idx.unapproved[0].product, "bash");
        assert_eq!(idx.unapproved[0].hosts, 2);
    }
}
