//! The audit computation: the register against the live CIs, in memory, independent of
//! the store (the service feeds it one streamed scan; the bench feeds it generated CIs).
//!
//! [`Auditor::new`] indexes the register by (host, class, key) — host and class interned
//! to numbers, the key borrowed from the register, so building the index allocates once
//! per row for the hash map slot only. [`Auditor::observe`] takes each CI of an audited
//! class: one hash lookup, then a comparison of the row's expected attributes.
//! [`Auditor::finish`] turns the rows never seen into `missing` deficiencies.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use cmdb_proto::model::AttrValue;
use serde::{Deserialize, Serialize};

use super::register::RegisterRow;
use crate::store::{CiRecord, CiState, HOST_CLASS};

/// Kinds of deficiency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Missing,
    Unregistered,
    Mismatched,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Missing => "missing",
            Kind::Unregistered => "unregistered",
            Kind::Mismatched => "mismatched",
        }
    }
}

/// A deficiency as the computation finds it (the service adds id and state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub class: String,
    pub key: String,
    /// As the register names it (missing, mismatched), or the host's name (unregistered).
    pub host: String,
    pub host_id: Option<String>,
    pub ci_id: Option<String>,
    pub attribute: Option<String>,
    pub expected: Option<String>,
    pub actual: Option<String>,
}

/// Per-class counts of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    pub class: String,
    pub registered: u64,
    /// Registered, found live, every expected attribute matching.
    pub healthy: u64,
    pub unregistered: u64,
}

/// Totals of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Register rows.
    pub registered: u64,
    /// Live CIs in scope (audited class on an audited host): matched plus unregistered.
    pub live: u64,
    /// Registered CIs not seen live.
    pub missing: u64,
    /// Live CIs in scope with no register row.
    pub unregistered: u64,
    /// Registered CIs found live with at least one expected attribute differing.
    pub mismatched: u64,
}

/// The outcome of one computation.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub summary: Summary,
    pub classes: Vec<ClassCount>,
    /// Sorted by (kind, class, host, key, attribute).
    pub found: Vec<Found>,
}

/// Hosts known to the CMDB: host id → hostname.
#[derive(Clone, Debug, Default)]
pub struct Hosts {
    names: HashMap<String, String>,
    by_name: HashMap<String, Vec<String>>,
}

impl Hosts {
    pub fn add(&mut self, host_id: &str, hostname: Option<&str>) {
        let name = hostname.unwrap_or("");
        if let Some(old) = self.names.get(host_id)
            && (!old.is_empty() || name.is_empty())
        {
            return;
        }
        self.names.insert(host_id.to_owned(), name.to_owned());
        if !name.is_empty() {
            let ids = self.by_name.entry(name.to_ascii_lowercase()).or_default();
            if !ids.iter().any(|i| i == host_id) {
                ids.push(host_id.to_owned());
            }
        }
    }

    /// The host ids a register `host` names: itself when it is a known host id, else every
    /// host with that hostname (case-insensitive).
    pub fn resolve(&self, host: &str) -> Vec<&str> {
        if let Some((id, _)) = self.names.get_key_value(host) {
            return vec![id.as_str()];
        }
        self.by_name
            .get(&host.to_ascii_lowercase())
            .map(|ids| ids.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    pub fn name(&self, host_id: &str) -> Option<&str> {
        self.names
            .get(host_id)
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }
}

/// Whether `actual` is what `expected` says. A string expectation (as CSV gives) matches
/// the value's text form; numbers compare numerically; booleans exactly.
pub fn matches(expected: &serde_json::Value, actual: Option<&AttrValue>) -> bool {
    use serde_json::Value as J;
    let Some(actual) = actual else {
        return false;
    };
    match (expected, actual) {
        (J::String(e), AttrValue::Str(a)) => e == a,
        (J::String(e), AttrValue::Int(i)) => e.trim().parse::<i64>().is_ok_and(|n| n == *i),
        (J::String(e), AttrValue::Float(f)) => e.trim().parse::<f64>().is_ok_and(|n| n == *f),
        (J::String(e), AttrValue::Bool(b)) => e.trim().eq_ignore_ascii_case(bool_text(*b)),
        (J::String(e), AttrValue::List(_)) => *e == text(actual),
        (J::Number(n), AttrValue::Int(i)) => {
            n.as_i64() == Some(*i) || n.as_f64().is_some_and(|f| f == *i as f64)
        }
        (J::Number(n), AttrValue::Float(f)) => n.as_f64() == Some(*f),
        (J::Number(n), AttrValue::Str(s)) => s.trim() == n.to_string(),
        (J::Bool(b), AttrValue::Bool(a)) => a == b,
        (J::Bool(b), AttrValue::Str(s)) => s.trim().eq_ignore_ascii_case(bool_text(*b)),
        _ => false,
    }
}

fn bool_text(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// An attribute value as text (strings bare, the rest as JSON).
pub fn text(v: &AttrValue) -> String {
    match v {
        AttrValue::Str(s) => s.clone(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Float(f) => f.to_string(),
        AttrValue::Bool(b) => bool_text(*b).to_owned(),
        AttrValue::Null => "null".to_owned(),
        AttrValue::List(_) => serde_json::to_string(v).unwrap_or_default(),
    }
}

/// An expected value as text.
pub fn expected_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// FxHash (the rustc hasher): a multiply-rotate hash, several times faster than SipHash
/// on short keys. The keys are the register's own (class, host, key), not attacker-chosen
/// per request, and a collision flood would only slow an audit down.
#[derive(Clone, Copy, Default)]
pub struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type Fx = std::hash::BuildHasherDefault<FxHasher>;
type FxMap<K, V> = HashMap<K, V, Fx>;

const UNSEEN: u8 = 0;
const HEALTHY: u8 = 1;
const MISMATCHED: u8 = 2;

/// One audit computation (see the module doc).
pub struct Auditor<'r> {
    rows: &'r [RegisterRow],
    hosts: &'r Hosts,
    classes: FxMap<&'r str, u32>,
    class_names: Vec<&'r str>,
    /// Each row's class number.
    row_class: Vec<u32>,
    /// Audited host id → number.
    host_ids: FxMap<&'r str, u32>,
    index: FxMap<(u32, u32, &'r str), u32>,
    /// The last CI's host id and class, resolved (CIs come grouped by class and often
    /// by host).
    last_host: (String, Option<u32>),
    last_class: (String, Option<u32>),
    /// Rows whose (host, class, key) an earlier row already holds (one host named by
    /// hostname and by id): (first, other); the other shares the first's outcome.
    aliases: Vec<(u32, u32)>,
    seen: Vec<u8>,
    /// CI ids seen for rows (for the compliance failures of mismatched rows).
    cutoff: SystemTime,
    host_class: Option<u32>,
    unregistered: Vec<u64>,
    live: u64,
    found: Vec<Found>,
}

impl<'r> Auditor<'r> {
    /// `cutoff`: an absent CI last seen at or after it still counts as seen live.
    pub fn new(rows: &'r [RegisterRow], hosts: &'r Hosts, cutoff: SystemTime) -> Self {
        let mut classes: FxMap<&'r str, u32> = FxMap::default();
        let mut class_names = Vec::new();
        let mut row_class = Vec::with_capacity(rows.len());
        let mut host_ids: FxMap<&'r str, u32> = FxMap::default();
        // Resolution per distinct register host, once.
        let mut resolved: FxMap<&'r str, Vec<u32>> = FxMap::default();
        let mut index: FxMap<(u32, u32, &'r str), u32> =
            FxMap::with_capacity_and_hasher(rows.len(), Fx::default());
        let mut aliases = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let next = class_names.len() as u32;
            let c = *classes.entry(r.class.as_str()).or_insert_with(|| {
                class_names.push(r.class.as_str());
                next
            });
            row_class.push(c);
            let hs = resolved.entry(r.host.as_str()).or_insert_with(|| {
                hosts
                    .resolve(&r.host)
                    .into_iter()
                    .map(|id| {
                        let n = host_ids.len() as u32;
                        *host_ids.entry(id).or_insert(n)
                    })
                    .collect()
            });
            for &h in hs.iter() {
                match index.entry((h, c, r.key.as_str())) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        if *first.get() != i as u32 {
                            aliases.push((*first.get(), i as u32));
                        }
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(i as u32);
                    }
                }
            }
        }
        let host_class = classes.get(HOST_CLASS).copied();
        let n = class_names.len();
        Auditor {
            rows,
            hosts,
            classes,
            class_names,
            row_class,
            host_ids,
            index,
            last_host: (String::new(), None),
            last_class: (String::new(), None),
            aliases,
            seen: vec![UNSEEN; rows.len()],
            cutoff,
            host_class,
            unregistered: vec![0; n],
            live: 0,
            found: Vec::new(),
        }
    }

    /// The audited classes (those of the register).
    pub fn classes(&self) -> Vec<String> {
        self.class_names.iter().map(|c| (*c).to_owned()).collect()
    }

    /// Takes one CI (any state; CIs of classes outside the register are ignored).
    pub fn observe(&mut self, ci: &CiRecord) {
        if self.last_class.0 != ci.class || self.last_class.0.is_empty() {
            self.last_class = (
                ci.class.clone(),
                self.classes.get(ci.class.as_str()).copied(),
            );
        }
        let Some(c) = self.last_class.1 else {
            return;
        };
        let present = ci.state == CiState::Present;
        if self.last_host.0 != ci.host_id || self.last_host.0.is_empty() {
            self.last_host = (
                ci.host_id.clone(),
                self.host_ids.get(ci.host_id.as_str()).copied(),
            );
        }
        let h = self.last_host.1;
        if let Some(h) = h
            && let Some(&row) = self.index.get(&(h, c, ci.key.as_str()))
        {
            if !(present || ci.last_seen >= self.cutoff) {
                return;
            }
            let slot = &mut self.seen[row as usize];
            if *slot != UNSEEN {
                // Seen through another host of an ambiguous hostname: the first counts.
                return;
            }
            if present {
                self.live += 1;
            }
            let r = &self.rows[row as usize];
            let mut ok = true;
            for (name, expected) in &r.attributes {
                let actual = ci.attrs.get(name);
                if !matches(expected, actual) {
                    ok = false;
                    self.found.push(Found {
                        kind: Kind::Mismatched,
                        class: r.class.clone(),
                        key: r.key.clone(),
                        host: r.host.clone(),
                        host_id: Some(ci.host_id.clone()),
                        ci_id: Some(ci.id.clone()),
                        attribute: Some(name.clone()),
                        expected: Some(expected_text(expected)),
                        actual: actual.map(text),
                    });
                }
            }
            *slot = if ok { HEALTHY } else { MISMATCHED };
            return;
        }
        // Unregistered: present, of an audited class, on an audited host (every host for
        // class `host`).
        if present && (h.is_some() || Some(c) == self.host_class) {
            self.live += 1;
            self.unregistered[c as usize] += 1;
            self.found.push(Found {
                kind: Kind::Unregistered,
                class: ci.class.clone(),
                key: ci.key.clone(),
                host: self
                    .hosts
                    .name(&ci.host_id)
                    .unwrap_or(&ci.host_id)
                    .to_owned(),
                host_id: Some(ci.host_id.clone()),
                ci_id: Some(ci.id.clone()),
                attribute: None,
                expected: None,
                actual: None,
            });
        }
    }

    pub fn finish(mut self) -> Outcome {
        for &(first, other) in &self.aliases {
            let s = self.seen[first as usize];
            let o = &mut self.seen[other as usize];
            if *o == UNSEEN {
                *o = s;
            }
        }
        let mut classes: Vec<ClassCount> = self
            .class_names
            .iter()
            .enumerate()
            .map(|(i, c)| ClassCount {
                class: (*c).to_owned(),
                registered: 0,
                healthy: 0,
                unregistered: self.unregistered[i],
            })
            .collect();
        let mut s = Summary {
            registered: self.rows.len() as u64,
            live: self.live,
            ..Summary::default()
        };
        for (i, r) in self.rows.iter().enumerate() {
            let c = self.row_class[i] as usize;
            classes[c].registered += 1;
            match self.seen[i] {
                HEALTHY => classes[c].healthy += 1,
                MISMATCHED => s.mismatched += 1,
                _ => {
                    s.missing += 1;
                    let ids = self.hosts.resolve(&r.host);
                    self.found.push(Found {
                        kind: Kind::Missing,
                        class: r.class.clone(),
                        key: r.key.clone(),
                        host: r.host.clone(),
                        host_id: (ids.len() == 1).then(|| ids[0].to_owned()),
                        ci_id: None,
                        attribute: None,
                        expected: None,
                        actual: None,
                    });
                }
            }
        }
        s.unregistered = self.unregistered.iter().sum();
        classes.sort_by(|a, b| a.class.cmp(&b.class));
        self.found.sort_by(|a, b| {
            (a.kind, &a.class, &a.host, &a.key, &a.attribute).cmp(&(
                b.kind,
                &b.class,
                &b.host,
                &b.key,
                &b.attribute,
            ))
        });
        Outcome {
            summary: s,
            classes,
            found: self.found,
        }
    }
}

/// Register counts by class (for reports).
pub fn classes_of(rows: &[RegisterRow]) -> BTreeMap<&str, u64> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(r.class.as_str()).or_default() += 1;
    }
    m
}
