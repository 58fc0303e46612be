//! The authorised register and its import from CSV or JSON (all or nothing).
//!
//! A row is (class, key, host, expected attributes). CSV: a header naming the columns in
//! any order — `class`, `key`, `host` required, `attr.<name>` for each expected attribute
//! (an empty cell expects nothing), anything else is refused; row numbers are file line
//! numbers (the header is row 1). JSON: an array of objects `{"class", "key", "host",
//! "attributes": {…}}` (or `{"items": [...]}`); row N is the N-th object; unknown fields
//! are refused; attribute values are strings, numbers or booleans. A (class, key, host)
//! twice is refused. Bounded by [`MAX_IMPORT_BYTES`], [`MAX_ROWS`], [`MAX_FIELD_BYTES`],
//! [`MAX_ATTRS`]; at most [`MAX_REPORTED_ERRORS`] problems are listed.
//!
//! [`Register`] is the form held in memory for runs: every text interned once (hosts,
//! classes, keys, attribute names and values repeat across rows), a row four numbers, its
//! expected attributes pairs of numbers in one flat vector.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::fxhash::FxMap;
pub use crate::import_report::{ImportError, MAX_REPORTED_ERRORS, RowError};
use crate::import_report::{Problems, whole};

/// Largest import body (the route's body limit).
pub const MAX_IMPORT_BYTES: usize = 512 * 1024 * 1024;
/// Most rows in the register.
pub const MAX_ROWS: usize = 10_000_000;
/// Longest text field (class, key, host, attribute name or value).
pub const MAX_FIELD_BYTES: usize = 1024;
/// Most expected attributes per row.
pub const MAX_ATTRS: usize = 64;

/// One authorised CI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRow {
    pub class: String,
    /// The CI's natural key (for class `host`, the host id).
    pub key: String,
    /// A hostname or a host id.
    pub host: String,
    /// Expected attribute values (strings, numbers or booleans).
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

fn check_text(what: &str, v: &str, required: bool) -> Result<(), String> {
    if required && v.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if v.len() > MAX_FIELD_BYTES {
        return Err(format!("{what} is longer than {MAX_FIELD_BYTES} bytes"));
    }
    if v.chars().any(|c| c.is_control() || c == '\0') {
        return Err(format!("{what} holds a control character"));
    }
    Ok(())
}

/// Checks one row's fields (not duplicates).
pub fn check_row(r: &RegisterRow) -> Result<(), String> {
    check_text("class", &r.class, true)?;
    check_text("key", &r.key, true)?;
    check_text("host", &r.host, true)?;
    if r.attributes.len() > MAX_ATTRS {
        return Err(format!("more than {MAX_ATTRS} expected attributes"));
    }
    for (name, v) in &r.attributes {
        check_text("attribute name", name, true)?;
        match v {
            serde_json::Value::String(s) => check_text(&format!("attribute {name:?}"), s, false)?,
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {}
            other => {
                return Err(format!(
                    "attribute {name:?} is {}; expected a string, number or boolean",
                    type_name(other)
                ));
            }
        }
    }
    Ok(())
}

fn type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Refuses rows whose (class, key, host) an earlier row has.
fn check_duplicates(rows: &[(usize, RegisterRow)], p: &mut Problems) {
    let mut seen: std::collections::HashMap<(&str, &str, &str), usize> =
        std::collections::HashMap::with_capacity(rows.len());
    for (row, r) in rows {
        if let Some(first) = seen.insert((&r.class, &r.key, &r.host), *row) {
            p.add(
                *row,
                format!(
                    "duplicate (class {:?}, key {:?}, host {:?}) of row {first}",
                    r.class, r.key, r.host
                ),
            );
        }
    }
}

fn too_many() -> ImportError {
    whole(format!("the register holds more than {MAX_ROWS} rows"))
}

/// Parses a CSV register (see the module doc).
pub fn parse_csv(data: &[u8]) -> Result<Vec<RegisterRow>, ImportError> {
    if data.len() > MAX_IMPORT_BYTES {
        return Err(whole(format!(
            "the import is larger than {MAX_IMPORT_BYTES} bytes"
        )));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(data);
    let headers = reader
        .headers()
        .map_err(|e| whole(format!("row 1 (header): {e}")))?
        .clone();
    #[derive(Clone, PartialEq)]
    enum Col {
        Class,
        Key,
        Host,
        Attr(String),
        Unknown,
    }
    let mut p = Problems::default();
    let mut cols: Vec<Col> = Vec::with_capacity(headers.len());
    let mut names = HashSet::new();
    for h in &headers {
        let raw = h.trim().trim_start_matches('\u{feff}');
        let lower = raw.to_ascii_lowercase();
        let col = match lower.as_str() {
            "class" => Col::Class,
            "key" => Col::Key,
            "host" => Col::Host,
            _ if lower.starts_with("attr.") && raw.len() > 5 => {
                let name = &raw[5..];
                match check_text("attribute name", name, true) {
                    Ok(()) => Col::Attr(name.to_owned()),
                    Err(e) => {
                        p.add(1, e);
                        Col::Unknown
                    }
                }
            }
            _ => {
                p.add(
                    1,
                    format!(
                        "unknown column {:?} (columns: class, key, host, attr.<name>)",
                        raw.chars().take(64).collect::<String>()
                    ),
                );
                Col::Unknown
            }
        };
        if col != Col::Unknown && !names.insert(lower.clone()) {
            p.add(1, format!("column {raw:?} appears twice"));
        }
        cols.push(col);
    }
    for (c, name) in [
        (Col::Class, "class"),
        (Col::Key, "key"),
        (Col::Host, "host"),
    ] {
        if !cols.contains(&c) {
            p.add(1, format!("required column {name:?} is missing"));
        }
    }
    if cols.iter().filter(|c| matches!(c, Col::Attr(_))).count() > MAX_ATTRS {
        p.add(1, format!("more than {MAX_ATTRS} attr.<name> columns"));
    }
    if p.any() {
        return p.finish(Vec::new());
    }
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line() as usize;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line() as usize);
                let reason = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => format!("{len} fields where the header has {expected_len}"),
                    csv::ErrorKind::Utf8 { .. } => "not UTF-8".to_owned(),
                    _ => format!("malformed CSV: {e}"),
                };
                p.add(line, reason);
                // A malformed record may hide the rest of the file's structure.
                if !matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. }) {
                    break;
                }
                continue;
            }
        }
        let line = record.position().map_or(line, |p| p.line() as usize);
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if rows.len() >= MAX_ROWS {
            return Err(too_many());
        }
        let mut r = RegisterRow {
            class: String::new(),
            key: String::new(),
            host: String::new(),
            attributes: BTreeMap::new(),
        };
        for (col, field) in cols.iter().zip(record.iter()) {
            let v = field.trim();
            match col {
                Col::Class => r.class = v.to_owned(),
                Col::Key => r.key = v.to_owned(),
                Col::Host => r.host = v.to_owned(),
                Col::Attr(name) if !v.is_empty() => {
                    r.attributes
                        .insert(name.clone(), serde_json::Value::String(v.to_owned()));
                }
                Col::Attr(_) | Col::Unknown => {}
            }
        }
        match check_row(&r) {
            Ok(()) => rows.push((line, r)),
            Err(e) => p.add(line, e),
        }
    }
    check_duplicates(&rows, &mut p);
    p.finish(rows.into_iter().map(|(_, r)| r).collect())
}

/// Parses a JSON register (see the module doc).
pub fn parse_json(data: &[u8]) -> Result<Vec<RegisterRow>, ImportError> {
    if data.len() > MAX_IMPORT_BYTES {
        return Err(whole(format!(
            "the import is larger than {MAX_IMPORT_BYTES} bytes"
        )));
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Body {
        List(Vec<serde_json::Value>),
        Items { items: Vec<serde_json::Value> },
    }
    let items = match serde_json::from_slice::<Body>(data) {
        Ok(Body::List(v)) | Ok(Body::Items { items: v }) => v,
        Err(e) => {
            return Err(whole(format!(
                "not a JSON array of register rows (or {{\"items\": [...]}}): {e}"
            )));
        }
    };
    if items.len() > MAX_ROWS {
        return Err(too_many());
    }
    let mut p = Problems::default();
    let mut rows = Vec::with_capacity(items.len());
    for (i, v) in items.into_iter().enumerate() {
        let n = i + 1;
        if !v.is_object() {
            p.add(n, format!("{} where an object was expected", type_name(&v)));
            continue;
        }
        match serde_json::from_value::<RegisterRow>(v) {
            Ok(r) => match check_row(&r) {
                Ok(()) => rows.push((n, r)),
                Err(e) => p.add(n, e),
            },
            Err(e) => p.add(n, e.to_string()),
        }
    }
    check_duplicates(&rows, &mut p);
    p.finish(rows.into_iter().map(|(_, r)| r).collect())
}

/// A text's number in a [`Register`].
pub type Sym = u32;

/// The register as held in memory (see the module doc): about 16 bytes a row plus 8 per
/// expected attribute and the distinct texts, where a [`RegisterRow`] with its `BTreeMap`
/// costs several hundred. Rows keep their order and read back equal to what was pushed.
#[derive(Clone, Debug, Default)]
pub struct Register {
    texts: Vec<Arc<str>>,
    syms: FxMap<Arc<str>, Sym>,
    /// Distinct expected values, by (kind, text).
    values: Vec<serde_json::Value>,
    value_ids: FxMap<(u8, Sym), u32>,
    rows: Vec<Row>,
    /// (name, value) of every row's expected attributes, row after row, names in order.
    attrs: Vec<(Sym, u32)>,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    class: Sym,
    host: Sym,
    key: Sym,
    /// End of this row's attributes in `attrs` (they start where the previous row's end).
    attrs_end: u32,
}

impl From<Vec<RegisterRow>> for Register {
    fn from(rows: Vec<RegisterRow>) -> Register {
        Register::from_rows(rows)
    }
}

impl Register {
    pub fn from_rows(rows: impl IntoIterator<Item = RegisterRow>) -> Register {
        let mut r = Register::default();
        for row in rows {
            r.push(&row);
        }
        r
    }

    fn intern(&mut self, s: &str) -> Sym {
        if let Some(&n) = self.syms.get(s) {
            return n;
        }
        let n = self.texts.len() as Sym;
        let t: Arc<str> = Arc::from(s);
        self.texts.push(Arc::clone(&t));
        self.syms.insert(t, n);
        n
    }

    fn value_id(&mut self, v: &serde_json::Value) -> u32 {
        use serde_json::Value as J;
        // Kind and text identify a value: a float's text always has a '.' or an exponent,
        // an integer's never does, so equal (kind, text) means equal values.
        let (kind, sym) = match v {
            J::String(s) => (0, self.intern(s)),
            J::Number(n) => (1, self.intern(&n.to_string())),
            J::Bool(b) => (2, u32::from(*b)),
            other => (3, self.intern(&other.to_string())),
        };
        if let Some(&id) = self.value_ids.get(&(kind, sym)) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(v.clone());
        self.value_ids.insert((kind, sym), id);
        id
    }

    /// Appends a row (rows are checked before they get here; the register holds at most
    /// [`MAX_ROWS`] rows of at most [`MAX_ATTRS`] attributes, so the numbers fit).
    pub fn push(&mut self, row: &RegisterRow) {
        let class = self.intern(&row.class);
        let host = self.intern(&row.host);
        let key = self.intern(&row.key);
        for (name, v) in &row.attributes {
            let name = self.intern(name);
            let v = self.value_id(v);
            self.attrs.push((name, v));
        }
        self.rows.push(Row {
            class,
            host,
            key,
            attrs_end: self.attrs.len() as u32,
        });
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The number of a text, if any row uses it.
    pub fn sym(&self, s: &str) -> Option<Sym> {
        self.syms.get(s).copied()
    }

    pub fn text(&self, sym: Sym) -> &str {
        self.texts.get(sym as usize).map_or("", |t| t)
    }

    /// (class, host, key) of row `i` as numbers.
    pub fn syms_of(&self, i: usize) -> (Sym, Sym, Sym) {
        self.rows
            .get(i)
            .map_or((Sym::MAX, Sym::MAX, Sym::MAX), |r| (r.class, r.host, r.key))
    }

    pub fn class(&self, i: usize) -> &str {
        self.text(self.syms_of(i).0)
    }

    pub fn host(&self, i: usize) -> &str {
        self.text(self.syms_of(i).1)
    }

    pub fn key(&self, i: usize) -> &str {
        self.text(self.syms_of(i).2)
    }

    /// Row `i`'s expected attributes, by name.
    pub fn attributes(&self, i: usize) -> impl Iterator<Item = (&str, &serde_json::Value)> {
        let start = match i.checked_sub(1) {
            Some(p) => self.rows.get(p).map_or(0, |r| r.attrs_end as usize),
            None => 0,
        };
        let end = self.rows.get(i).map_or(start, |r| r.attrs_end as usize);
        self.attrs
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .filter_map(|&(n, v)| Some((self.text(n), self.values.get(v as usize)?)))
    }

    /// Row `i` as imported.
    pub fn row(&self, i: usize) -> Option<RegisterRow> {
        (i < self.rows.len()).then(|| RegisterRow {
            class: self.class(i).to_owned(),
            key: self.key(i).to_owned(),
            host: self.host(i).to_owned(),
            attributes: self
                .attributes(i)
                .map(|(n, v)| (n.to_owned(), v.clone()))
                .collect(),
        })
    }

    /// Rows `from..to` (clamped to the register).
    pub fn rows(&self, from: usize, to: usize) -> Vec<RegisterRow> {
        (from..to.min(self.len()))
            .filter_map(|i| self.row(i))
            .collect()
    }

    /// Every row.
    pub fn to_rows(&self) -> Vec<RegisterRow> {
        self.rows(0, self.len())
    }
}
