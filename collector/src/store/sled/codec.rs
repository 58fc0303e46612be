//! The binary encoding of the hot records: CI records and version pages (everything else is
//! JSON, written once per call at most).
//!
//! Primitives: unsigned LEB128 varints; strings and byte strings as varint length + bytes;
//! times as varint whole seconds since the epoch (the precision the JSON form had; times
//! before 1970 clamp to 0); attribute maps as varint count + (key, value) in key order, a
//! value as one tag byte + payload (0 null, 1/2 false/true, 3 `Int` zigzag varint, 4 `Float`
//! the 8 IEEE bytes so floats round-trip exactly, 5 string, 6 list: count + values).
//! Attribute encodings are canonical — keys in order, non-finite floats and lists nested
//! deeper than [`MAX_DEPTH`] stored as null — so equal attributes have equal bytes and the
//! writer compares bytes. Every record starts with a tag byte and must be consumed exactly:
//! a wrong tag, a truncated field, trailing bytes, invalid UTF-8 or nesting deeper than
//! [`MAX_DEPTH`] is reported as [`StoreError::Corrupt`], never a panic.
//!
//! Sizes (a package like the throughput test's: 5 short attributes): a CI record 113 bytes
//! (JSON: 376) and a version entry 100 bytes in its page (JSON, with `old_attrs`: 334).
//!
//! CI record (`c/<host>\0<class>\0<ci id>`, host, class and id come from the key):
//! `0xC1, state u8, version, head, first_seen, last_seen, last_changed, source_agent,
//! source_seq, key, attrs` — `head` is the commit number of the page holding the latest
//! version.
//!
//! Version page (`v/<commit><first ci id><first version>`): `0xB1` then entries sorted by
//! (ci id, version), each `ci id, version, payload length, payload` so that a lookup skips
//! the payloads it does not want. Payload: `prev, change u8, state u8, observed_at,
//! agent_id, seq, change_id (0 | 1 + string), attrs` — `prev` is the commit number of the
//! page holding the previous version (0 for version 1). `old_attrs` is not stored: it is
//! the previous version's `attrs` (see the `history` module).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cmdb_proto::model::{AttrValue, Attrs};
use cmdb_proto::v1;

use crate::store::{ChangeKind, CiRecord, CiState, StoreError};

/// Deepest list nesting decoded (prost refuses deeper messages long before this).
pub(super) const MAX_DEPTH: usize = 128;

const TAG_CI: u8 = 0xC1;
const TAG_PAGE: u8 = 0xB1;

// === writing ===

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_time(out: &mut Vec<u8>, t: SystemTime) {
    put_varint(out, secs(t));
}

/// Whole seconds since the epoch (0 before it).
pub(super) fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The stored form of an attribute map, canonical: floats that are not finite (NaN never
/// equals itself, JSON cannot carry them) and lists nested deeper than [`MAX_DEPTH`] are
/// stored as null. Two maps are equal iff their encodings are, so the writer compares
/// encodings.
pub(super) fn encode_attrs(attrs: &Attrs) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * attrs.len() + 1);
    put_varint(&mut out, attrs.len() as u64);
    for (k, v) in attrs {
        put_str(&mut out, k);
        put_value(&mut out, v, 0);
    }
    out
}

/// [`encode_attrs`] of the attributes a delta carries, without building them first: the
/// same bytes as `encode_attrs(&attrs_from_proto(attrs))`.
pub(super) fn encode_proto_attrs(attrs: &BTreeMap<String, v1::Value>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * attrs.len() + 1);
    put_varint(&mut out, attrs.len() as u64);
    for (k, v) in attrs {
        put_str(&mut out, k);
        put_proto_value(&mut out, v, 0);
    }
    out
}

fn put_int(out: &mut Vec<u8>, i: i64) {
    out.push(3);
    put_varint(out, ((i << 1) ^ (i >> 63)) as u64);
}

fn put_float(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        out.push(4);
        out.extend_from_slice(&x.to_bits().to_le_bytes());
    } else {
        out.push(0);
    }
}

fn put_value(out: &mut Vec<u8>, v: &AttrValue, depth: usize) {
    match v {
        AttrValue::Null => out.push(0),
        AttrValue::Bool(b) => out.push(1 + u8::from(*b)),
        AttrValue::Int(i) => put_int(out, *i),
        AttrValue::Float(x) => put_float(out, *x),
        AttrValue::Str(s) => {
            out.push(5);
            put_str(out, s);
        }
        AttrValue::List(_) if depth >= MAX_DEPTH => out.push(0),
        AttrValue::List(l) => {
            out.push(6);
            put_varint(out, l.len() as u64);
            for v in l {
                put_value(out, v, depth + 1);
            }
        }
    }
}

fn put_proto_value(out: &mut Vec<u8>, v: &v1::Value, depth: usize) {
    use v1::value::Kind;
    match &v.kind {
        None | Some(Kind::Null(_)) => out.push(0),
        Some(Kind::Bool(b)) => out.push(1 + u8::from(*b)),
        Some(Kind::Int(i)) => put_int(out, *i),
        Some(Kind::Float(x)) => put_float(out, *x),
        Some(Kind::String(s)) => {
            out.push(5);
            put_str(out, s);
        }
        Some(Kind::List(_)) if depth >= MAX_DEPTH => out.push(0),
        Some(Kind::List(l)) => {
            out.push(6);
            put_varint(out, l.values.len() as u64);
            for v in &l.values {
                put_proto_value(out, v, depth + 1);
            }
        }
    }
}

fn state_byte(s: CiState) -> u8 {
    match s {
        CiState::Present => 0,
        CiState::Absent => 1,
        CiState::Retired => 2,
    }
}

fn change_byte(c: ChangeKind) -> u8 {
    match c {
        ChangeKind::Added => 0,
        ChangeKind::Changed => 1,
        ChangeKind::Removed => 2,
        ChangeKind::Retired => 3,
    }
}

/// A CI record as the writer handles it: the fields decoded, the attributes kept in
/// their encoded form (compared, copied into versions, written back, never rebuilt).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct CiRow {
    pub(super) state: CiState,
    pub(super) version: u64,
    /// Commit number of the page holding the latest version.
    pub(super) head: u64,
    pub(super) first_seen: SystemTime,
    pub(super) last_seen: SystemTime,
    pub(super) last_changed: SystemTime,
    pub(super) source_agent: String,
    pub(super) source_seq: u64,
    /// The CI's key (its host and class are in the record's key).
    pub(super) key: String,
    /// [`encode_attrs`] form.
    pub(super) attrs: Vec<u8>,
}

/// The value of a CI record (its key carries host, class and id).
pub(super) fn encode_row(row: &CiRow) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + row.source_agent.len() + row.key.len() + row.attrs.len());
    out.push(TAG_CI);
    out.push(state_byte(row.state));
    put_varint(&mut out, row.version);
    put_varint(&mut out, row.head);
    put_time(&mut out, row.first_seen);
    put_time(&mut out, row.last_seen);
    put_time(&mut out, row.last_changed);
    put_str(&mut out, &row.source_agent);
    put_varint(&mut out, row.source_seq);
    put_str(&mut out, &row.key);
    out.extend_from_slice(&row.attrs);
    out
}

/// What a version entry records besides its CI id and number.
pub(super) struct VersionFields<'a> {
    pub(super) prev: u64,
    pub(super) change: ChangeKind,
    pub(super) state: CiState,
    pub(super) observed_at: SystemTime,
    pub(super) agent_id: &'a str,
    pub(super) seq: u64,
    pub(super) change_id: Option<&'a str>,
    /// [`encode_attrs`] form.
    pub(super) attrs: &'a [u8],
}

/// Appends the payload of a version entry to `out`.
pub(super) fn put_version_payload(out: &mut Vec<u8>, v: &VersionFields<'_>) {
    put_varint(out, v.prev);
    out.push(change_byte(v.change));
    out.push(state_byte(v.state));
    put_time(out, v.observed_at);
    put_str(out, v.agent_id);
    put_varint(out, v.seq);
    match v.change_id {
        None => out.push(0),
        Some(c) => {
            out.push(1);
            put_str(out, c);
        }
    }
    out.extend_from_slice(v.attrs);
}

/// A version page: its first entry's CI id and version (its key), and its value.
pub(super) struct Page {
    pub(super) first_id: String,
    pub(super) first_version: u64,
    pub(super) bytes: Vec<u8>,
}

/// Builds version pages: entries must be added in (ci id, version) order.
pub(super) struct PageWriter {
    target: usize,
    pages: Vec<Page>,
    open: Option<Page>,
}

impl PageWriter {
    /// Pages close once they reach `target` bytes (one entry may exceed it alone).
    pub(super) fn new(target: usize) -> Self {
        PageWriter {
            target,
            pages: Vec::new(),
            open: None,
        }
    }

    pub(super) fn push(&mut self, ci_id: &str, version: u64, payload: &[u8]) {
        if self
            .open
            .as_ref()
            .is_some_and(|p| p.bytes.len() >= self.target)
            && let Some(done) = self.open.take()
        {
            self.pages.push(done);
        }
        let target = self.target;
        let page = self.open.get_or_insert_with(|| {
            let mut bytes = Vec::with_capacity(target + 256);
            bytes.push(TAG_PAGE);
            Page {
                first_id: ci_id.to_owned(),
                first_version: version,
                bytes,
            }
        });
        put_str(&mut page.bytes, ci_id);
        put_varint(&mut page.bytes, version);
        put_bytes(&mut page.bytes, payload);
    }

    pub(super) fn finish(mut self) -> Vec<Page> {
        self.pages.extend(self.open.take());
        self.pages
    }
}

// === reading ===

/// A cursor over one record; every read checks bounds.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    key: &'a [u8],
}

impl<'a> Reader<'a> {
    /// `key` only names the record in errors.
    pub(super) fn new(key: &'a [u8], buf: &'a [u8]) -> Self {
        Reader { buf, key }
    }

    pub(super) fn corrupt(&self, reason: &str) -> StoreError {
        StoreError::Corrupt {
            key: String::from_utf8_lossy(self.key).into_owned(),
            reason: reason.to_owned(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| self.corrupt("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    pub(super) fn varint(&mut self) -> Result<u64, StoreError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.corrupt("varint too long"))
    }

    fn len(&mut self) -> Result<usize, StoreError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.buf.len())
            .ok_or_else(|| self.corrupt("length beyond the record"))
    }

    pub(super) fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.len()?;
        let (b, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(b)
    }

    pub(super) fn str(&mut self) -> Result<&'a str, StoreError> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| self.corrupt("invalid UTF-8"))
    }

    fn string(&mut self) -> Result<String, StoreError> {
        self.str().map(str::to_owned)
    }

    fn time(&mut self) -> Result<SystemTime, StoreError> {
        let s = self.varint()?;
        UNIX_EPOCH
            .checked_add(Duration::from_secs(s))
            .ok_or_else(|| self.corrupt("time out of range"))
    }

    fn state(&mut self) -> Result<CiState, StoreError> {
        match self.u8()? {
            0 => Ok(CiState::Present),
            1 => Ok(CiState::Absent),
            2 => Ok(CiState::Retired),
            _ => Err(self.corrupt("unknown CI state")),
        }
    }

    fn change(&mut self) -> Result<ChangeKind, StoreError> {
        match self.u8()? {
            0 => Ok(ChangeKind::Added),
            1 => Ok(ChangeKind::Changed),
            2 => Ok(ChangeKind::Removed),
            3 => Ok(ChangeKind::Retired),
            _ => Err(self.corrupt("unknown change kind")),
        }
    }

    pub(super) fn attrs(&mut self) -> Result<Attrs, StoreError> {
        let n = self.varint()?;
        let mut attrs = Attrs::new();
        for _ in 0..n {
            let k = self.string()?;
            let v = self.value(0)?;
            attrs.insert(k, v);
        }
        Ok(attrs)
    }

    /// Checks an encoded attribute map (as `attrs` would) without building it; returns
    /// its bytes.
    fn attrs_bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let start = self.buf;
        let n = self.varint()?;
        for _ in 0..n {
            self.str()?;
            self.skip_value(0)?;
        }
        Ok(&start[..start.len() - self.buf.len()])
    }

    fn skip_value(&mut self, depth: usize) -> Result<(), StoreError> {
        match self.u8()? {
            0..=2 => {}
            3 => {
                self.varint()?;
            }
            4 => {
                let b = self
                    .buf
                    .split_first_chunk::<8>()
                    .ok_or_else(|| self.corrupt("truncated float"))?;
                self.buf = b.1;
            }
            5 => {
                self.str()?;
            }
            6 => {
                if depth >= MAX_DEPTH {
                    return Err(self.corrupt("lists nested too deep"));
                }
                for _ in 0..self.varint()? {
                    self.skip_value(depth + 1)?;
                }
            }
            _ => return Err(self.corrupt("unknown value tag")),
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<AttrValue, StoreError> {
        Ok(match self.u8()? {
            0 => AttrValue::Null,
            1 => AttrValue::Bool(false),
            2 => AttrValue::Bool(true),
            3 => {
                let z = self.varint()?;
                AttrValue::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            4 => {
                let b = self
                    .buf
                    .split_first_chunk::<8>()
                    .ok_or_else(|| self.corrupt("truncated float"))?;
                let x = f64::from_bits(u64::from_le_bytes(*b.0));
                self.buf = b.1;
                AttrValue::Float(x)
            }
            5 => AttrValue::Str(self.string()?),
            6 => {
                if depth >= MAX_DEPTH {
                    return Err(self.corrupt("lists nested too deep"));
                }
                let n = self.varint()?;
                // Every element takes at least one byte: bound the allocation by the input.
                let cap = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
                let mut l = Vec::with_capacity(cap);
                for _ in 0..n {
                    l.push(self.value(depth + 1)?);
                }
                AttrValue::List(l)
            }
            _ => return Err(self.corrupt("unknown value tag")),
        })
    }

    fn end(&self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes"))
        }
    }
}

/// Decodes a CI record for the writer (attributes checked, left encoded).
pub(super) fn decode_row(key: &[u8], bytes: &[u8]) -> Result<CiRow, StoreError> {
    let mut r = Reader::new(key, bytes);
    if r.u8()? != TAG_CI {
        return Err(r.corrupt("not a CI record"));
    }
    let row = CiRow {
        state: r.state()?,
        version: r.varint()?,
        head: r.varint()?,
        first_seen: r.time()?,
        last_seen: r.time()?,
        last_changed: r.time()?,
        source_agent: r.string()?,
        source_seq: r.varint()?,
        key: r.string()?,
        attrs: r.attrs_bytes()?.to_vec(),
    };
    r.end()?;
    Ok(row)
}

/// A CI record as a bulk scan reads it: what an audit needs, borrowed from the value; the
/// attributes checked (as [`decode_row`] checks them) but left encoded for [`find_attr`].
#[derive(Debug, PartialEq)]
pub(super) struct ScanRow<'a> {
    pub(super) state: CiState,
    pub(super) last_seen: SystemTime,
    pub(super) key: &'a str,
    pub(super) attrs: &'a [u8],
}

/// Decodes a CI record for a scan (see [`ScanRow`]): nothing is allocated.
pub(super) fn decode_scan_row<'a>(
    key: &'a [u8],
    bytes: &'a [u8],
) -> Result<ScanRow<'a>, StoreError> {
    let mut r = Reader::new(key, bytes);
    if r.u8()? != TAG_CI {
        return Err(r.corrupt("not a CI record"));
    }
    let state = r.state()?;
    r.varint()?; // version
    r.varint()?; // head
    r.time()?; // first_seen
    let last_seen = r.time()?;
    r.time()?; // last_changed
    r.str()?; // source_agent
    r.varint()?; // source_seq
    let ci_key = r.str()?;
    let attrs = r.attrs_bytes()?;
    r.end()?;
    Ok(ScanRow {
        state,
        last_seen,
        key: ci_key,
        attrs,
    })
}

/// The attribute `name` of an encoded attribute map ([`encode_attrs`] form), decoded alone
/// (the others are skipped, keys are in order so the search stops early). `None` when the
/// map lacks it — or when the bytes are malformed, which a map [`decode_scan_row`] checked
/// never is.
pub(crate) fn find_attr(attrs: &[u8], name: &str) -> Option<AttrValue> {
    let mut r = Reader::new(b"", attrs);
    let n = r.varint().ok()?;
    for _ in 0..n {
        let k = r.str().ok()?;
        match k.cmp(name) {
            std::cmp::Ordering::Less => r.skip_value(0).ok()?,
            std::cmp::Ordering::Equal => return r.value(0).ok(),
            std::cmp::Ordering::Greater => return None,
        }
    }
    None
}

/// The attribute `name` of an encoded attribute map when it is a string, borrowed from the
/// encoding (nothing allocated); `None` when the map lacks it, when it is not a string, or
/// when the bytes are malformed (see [`find_attr`]).
pub(crate) fn find_str_attr<'a>(attrs: &'a [u8], name: &str) -> Option<&'a str> {
    let mut r = Reader::new(b"", attrs);
    let n = r.varint().ok()?;
    for _ in 0..n {
        let k = r.str().ok()?;
        match k.cmp(name) {
            std::cmp::Ordering::Less => r.skip_value(0).ok()?,
            std::cmp::Ordering::Equal => {
                return match r.u8().ok()? {
                    5 => r.str().ok(),
                    _ => None,
                };
            }
            std::cmp::Ordering::Greater => return None,
        }
    }
    None
}

/// Decodes attributes stored by [`encode_attrs`].
pub(super) fn decode_attrs(key: &[u8], bytes: &[u8]) -> Result<Attrs, StoreError> {
    let mut r = Reader::new(key, bytes);
    let attrs = r.attrs()?;
    r.end()?;
    Ok(attrs)
}

/// The API's view of a row of (host, class, id).
pub(super) fn row_to_record(
    key: &[u8],
    row: &CiRow,
    host: &str,
    class: &str,
    id: &str,
) -> Result<CiRecord, StoreError> {
    Ok(CiRecord {
        id: id.to_owned(),
        host_id: host.to_owned(),
        class: class.to_owned(),
        key: row.key.clone(),
        state: row.state,
        attrs: decode_attrs(key, &row.attrs)?,
        version: row.version,
        first_seen: row.first_seen,
        last_seen: row.last_seen,
        last_changed: row.last_changed,
        source_agent: row.source_agent.clone(),
        source_seq: row.source_seq,
    })
}

/// Decodes a CI record of (host, class, id); also returns its head commit.
pub(super) fn decode_ci(
    key: &[u8],
    host: &str,
    class: &str,
    id: &str,
    bytes: &[u8],
) -> Result<(CiRecord, u64), StoreError> {
    let row = decode_row(key, bytes)?;
    Ok((row_to_record(key, &row, host, class, id)?, row.head))
}

/// A decoded version entry (its CI id and number are the caller's).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StoredVersion {
    pub(super) prev: u64,
    pub(super) change: ChangeKind,
    pub(super) state: CiState,
    pub(super) observed_at: SystemTime,
    pub(super) agent_id: String,
    pub(super) seq: u64,
    pub(super) change_id: Option<String>,
    pub(super) attrs: Attrs,
}

pub(super) fn decode_version_payload(
    key: &[u8],
    payload: &[u8],
) -> Result<StoredVersion, StoreError> {
    let mut r = Reader::new(key, payload);
    let prev = r.varint()?;
    let change = r.change()?;
    let state = r.state()?;
    let observed_at = r.time()?;
    let agent_id = r.string()?;
    let seq = r.varint()?;
    let change_id = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return Err(r.corrupt("bad change_id flag")),
    };
    let attrs = r.attrs()?;
    r.end()?;
    Ok(StoredVersion {
        prev,
        change,
        state,
        observed_at,
        agent_id,
        seq,
        change_id,
        attrs,
    })
}

/// The entries of one version page, in order: (ci id, version, payload).
pub(super) struct PageEntries<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> PageEntries<'a> {
    pub(super) fn new(key: &'a [u8], page: &'a [u8]) -> Result<Self, StoreError> {
        let mut r = Reader::new(key, page);
        if r.u8()? != TAG_PAGE {
            return Err(r.corrupt("not a version page"));
        }
        Ok(PageEntries { r, failed: false })
    }

    fn entry(&mut self) -> Result<(&'a str, u64, &'a [u8]), StoreError> {
        let id = self.r.str()?;
        let version = self.r.varint()?;
        let payload = self.r.bytes()?;
        Ok((id, version, payload))
    }
}

impl<'a> Iterator for PageEntries<'a> {
    type Item = Result<(&'a str, u64, &'a [u8]), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.is_empty() {
            return None;
        }
        let e = self.entry();
        self.failed = e.is_err();
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = AttrValue> {
        let leaf = prop_oneof![
            Just(AttrValue::Null),
            any::<bool>().prop_map(AttrValue::Bool),
            any::<i64>().prop_map(AttrValue::Int),
            any::<f64>()
                .prop_filter("NaN never equals itself", |x| !x.is_nan())
                .prop_map(AttrValue::Float),
            ".{0,12}".prop_map(AttrValue::Str),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop::collection::vec(inner, 0..4).prop_map(AttrValue::List)
        })
    }

    fn attrs() -> impl Strategy<Value = Attrs> {
        prop::collection::btree_map(".{0,8}", value(), 0..6)
    }

    fn record(attrs: Attrs) -> CiRecord {
        CiRecord {
            id: "ci-0123456789abcdef".into(),
            host_id: "host-1".into(),
            class: "package".into(),
            key: "dpkg:bash:amd64".into(),
            state: CiState::Absent,
            attrs,
            version: 300,
            first_seen: UNIX_EPOCH + Duration::from_secs(5),
            last_seen: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            last_changed: UNIX_EPOCH + Duration::from_secs(7),
            source_agent: "agt-1".into(),
            source_seq: u64::MAX,
        }
    }

    fn encode_ci(rec: &CiRecord, head: u64) -> Vec<u8> {
        encode_row(&CiRow {
            state: rec.state,
            version: rec.version,
            head,
            first_seen: rec.first_seen,
            last_seen: rec.last_seen,
            last_changed: rec.last_changed,
            source_agent: rec.source_agent.clone(),
            source_seq: rec.source_seq,
            key: rec.key.clone(),
            attrs: encode_attrs(&rec.attrs),
        })
    }

    proptest! {
        #[test]
        fn ci_records_round_trip(attrs in attrs(), head in any::<u64>()) {
            let rec = record(attrs);
            let bytes = encode_ci(&rec, head);
            let back = decode_ci(b"k", "host-1", "package", "ci-0123456789abcdef", &bytes).unwrap();
            prop_assert_eq!(back, (rec, head));
            let row = decode_row(b"k", &bytes).unwrap();
            prop_assert_eq!(encode_row(&row), bytes);
        }

        /// Deltas are encoded straight from protobuf: the same bytes as through the model.
        #[test]
        fn proto_attrs_encode_like_model_attrs(attrs in attrs()) {
            let proto = cmdb_proto::convert::attrs_to_proto(&attrs);
            let via_model = encode_attrs(&cmdb_proto::convert::attrs_from_proto(&proto));
            prop_assert_eq!(encode_proto_attrs(&proto), via_model.clone());
            prop_assert_eq!(decode_attrs(b"k", &via_model).unwrap(), attrs);
        }

        #[test]
        fn version_payloads_round_trip(attrs in attrs(), prev in any::<u64>(), seq in any::<u64>()) {
            let mut out = Vec::new();
            let encoded = encode_attrs(&attrs);
            put_version_payload(&mut out, &VersionFields {
                prev,
                change: ChangeKind::Retired,
                state: CiState::Retired,
                observed_at: UNIX_EPOCH + Duration::from_secs(99),
                agent_id: "agt-x",
                seq,
                change_id: Some("chg-1"),
                attrs: &encoded,
            });
            let v = decode_version_payload(b"k", &out).unwrap();
            prop_assert_eq!(v, StoredVersion {
                prev,
                change: ChangeKind::Retired,
                state: CiState::Retired,
                observed_at: UNIX_EPOCH + Duration::from_secs(99),
                agent_id: "agt-x".into(),
                seq,
                change_id: Some("chg-1".into()),
                attrs,
            });
        }

        /// A scan decode sees what the full decode sees; each attribute found alone is
        /// the decoded map's, and a name it lacks is absent.
        #[test]
        fn scan_rows_agree_with_full_decode(attrs in attrs(), probe in ".{0,8}") {
            let rec = record(attrs);
            let bytes = encode_ci(&rec, 7);
            let row = decode_scan_row(b"k", &bytes).unwrap();
            prop_assert_eq!(row.state, rec.state);
            prop_assert_eq!(row.last_seen, rec.last_seen);
            prop_assert_eq!(row.key, rec.key.as_str());
            let as_str = |v: Option<&AttrValue>| match v {
                Some(AttrValue::Str(s)) => Some(s.clone()),
                _ => None,
            };
            for (name, v) in &rec.attrs {
                prop_assert_eq!(find_attr(row.attrs, name), Some(v.clone()));
                prop_assert_eq!(find_str_attr(row.attrs, name).map(str::to_owned), as_str(Some(v)));
            }
            prop_assert_eq!(find_attr(row.attrs, &probe), rec.attrs.get(&probe).cloned());
            prop_assert_eq!(
                find_str_attr(row.attrs, &probe).map(str::to_owned),
                as_str(rec.attrs.get(&probe))
            );
        }

        /// Scan decodes of garbage never panic, and never accept what the full decode refuses.
        #[test]
        fn garbage_scan_rows_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), probe in ".{0,4}") {
            let scan = decode_scan_row(b"k", &bytes);
            prop_assert_eq!(scan.is_ok(), decode_row(b"k", &bytes).is_ok());
            let _ = find_attr(&bytes, &probe);
            let _ = find_str_attr(&bytes, &probe);
        }

        /// Garbage never panics: it decodes to something or is reported corrupt.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_ci(b"k", "h", "c", "i", &bytes);
            let _ = decode_row(b"k", &bytes);
            let _ = decode_version_payload(b"k", &bytes);
            if let Ok(entries) = PageEntries::new(b"k", &bytes) {
                for e in entries {
                    let _ = e;
                }
            }
        }
    }

    #[test]
    fn non_finite_floats_and_deep_lists_are_stored_as_null() {
        let mut deep = AttrValue::Int(1);
        for _ in 0..=MAX_DEPTH {
            deep = AttrValue::List(vec![deep]);
        }
        let mut a = Attrs::new();
        a.insert("nan".into(), AttrValue::Float(f64::NAN));
        a.insert(
            "inf".into(),
            AttrValue::List(vec![AttrValue::Float(f64::INFINITY)]),
        );
        a.insert("deep".into(), deep);
        let back = decode_attrs(b"k", &encode_attrs(&a)).unwrap();
        assert_eq!(back["nan"], AttrValue::Null);
        assert_eq!(back["inf"], AttrValue::List(vec![AttrValue::Null]));
        let mut v = &back["deep"];
        let mut depth = 0;
        while let AttrValue::List(l) = v {
            v = &l[0];
            depth += 1;
        }
        assert_eq!((depth, v), (MAX_DEPTH, &AttrValue::Null));
    }

    #[test]
    fn truncation_and_trailing_bytes_are_corrupt() {
        let mut a = Attrs::new();
        a.insert("x".into(), AttrValue::List(vec![AttrValue::Int(-3)]));
        let bytes = encode_ci(&record(a), 9);
        for n in 0..bytes.len() {
            assert!(decode_ci(b"k", "h", "c", "i", &bytes[..n]).is_err(), "{n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_ci(b"k", "h", "c", "i", &longer).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut out = vec![TAG_CI, 0];
        for _ in 0..5 {
            put_varint(&mut out, 1);
        }
        put_str(&mut out, "a");
        put_varint(&mut out, 1);
        put_str(&mut out, "k");
        put_varint(&mut out, 1);
        put_str(&mut out, "v");
        for _ in 0..100_000 {
            out.extend_from_slice(&[6, 1]);
        }
        out.push(0);
        assert!(decode_ci(b"k", "h", "c", "i", &out).is_err());
        assert!(decode_row(b"k", &out).is_err());
    }

    #[test]
    fn pages_split_at_the_target_and_list_their_entries() {
        let mut w = PageWriter::new(40);
        for i in 0..10u64 {
            w.push(&format!("ci-{i:016x}"), i + 1, &[7; 10]);
        }
        let pages = w.finish();
        assert!(pages.len() > 1);
        let mut seen = Vec::new();
        for page in &pages {
            let entries: Vec<_> = PageEntries::new(b"k", &page.bytes)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let (id, v, _) = entries[0];
            assert_eq!((page.first_id.as_str(), page.first_version), (id, v));
            seen.extend(entries.iter().map(|(_, v, p)| (*v, p.len())));
        }
        assert_eq!(seen, (1..=10).map(|v| (v, 10)).collect::<Vec<_>>());
    }
}
