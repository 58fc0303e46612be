//! Run reports: CSV (one row per deficiency) and one self-contained HTML page (inline
//! CSS, no script, no external reference; every value HTML-escaped). JSON is the run
//! itself ([`super::Run`]).

use std::fmt::Write as _;

use super::{Deficiency, Run};

/// The CSV columns, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "id",
    "kind",
    "class",
    "key",
    "host",
    "host_id",
    "ci_id",
    "attribute",
    "expected",
    "actual",
    "state",
    "note",
    "updated_at",
    "updated_by",
];

fn cells(d: &Deficiency) -> [String; 14] {
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        d.id.clone(),
        d.kind.as_str().to_owned(),
        d.class.clone(),
        d.key.clone(),
        d.host.clone(),
        o(&d.host_id),
        o(&d.ci_id),
        o(&d.attribute),
        o(&d.expected),
        o(&d.actual),
        d.state.as_str().to_owned(),
        d.note.clone(),
        d.updated_at
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default(),
        o(&d.updated_by),
    ]
}

/// Spreadsheets run a cell starting with `=`, `+`, `-` or `@` as a formula: such cells get
/// a leading `'`.
fn defuse(s: String) -> String {
    if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s
    }
}

/// The deficiencies as CSV with a header row.
pub fn csv(run: &Run) -> Result<Vec<u8>, String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_COLUMNS).map_err(|e| e.to_string())?;
    for d in &run.deficiencies {
        w.write_record(cells(d).map(defuse))
            .map_err(|e| e.to_string())?;
    }
    w.into_inner().map_err(|e| e.to_string())
}

/// HTML-escapes `s`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}table{border-collapse:collapse;margin:1em 0;font-size:.9em}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f0f0f0}.missing{color:#a00}.unregistered{color:#a60}.mismatched{color:#06a}\
.muted{color:#777}";

/// The run as one self-contained HTML page.
pub fn html(run: &Run) -> String {
    let i = &run.info;
    let t = |t| humantime::format_rfc3339_seconds(t).to_string();
    let mut h = String::with_capacity(4096 + run.deficiencies.len() * 300);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Configuration audit {id}</title><style>{CSS}</style></head><body>\n\
         <h1>Configuration audit {id}</h1>\n\
         <p class=\"muted\">Started {s} by {by}, finished {f}; absent CIs count as live for \
         {days} days.</p>\n",
        id = escape(&i.id),
        s = t(i.started_at),
        by = escape(&i.started_by),
        f = t(i.finished_at),
        days = i.missing_after_days,
    );
    let s = &i.summary;
    let _ = write!(
        h,
        "<h2>Summary</h2>\n<table><tr><th>registered</th><th>live</th><th>missing</th>\
         <th>unregistered</th><th>mismatched</th></tr><tr><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td></tr></table>\n",
        s.registered, s.live, s.missing, s.unregistered, s.mismatched
    );
    h.push_str(
        "<h2>By class</h2>\n<table><tr><th>class</th><th>registered</th><th>healthy</th>\
         <th>unregistered</th></tr>\n",
    );
    for c in &i.classes {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.class),
            c.registered,
            c.healthy,
            c.unregistered
        );
    }
    h.push_str("</table>\n");
    let _ = writeln!(h, "<h2>Deficiencies ({})</h2>", run.deficiencies.len());
    if i.truncated {
        let _ = writeln!(
            h,
            "<p class=\"muted\">{} deficiencies were found; the first {} are listed.</p>",
            i.deficiencies_total,
            run.deficiencies.len()
        );
    }
    h.push_str("<table><tr>");
    for c in CSV_COLUMNS {
        let _ = write!(h, "<th>{c}</th>");
    }
    h.push_str("</tr>\n");
    for d in &run.deficiencies {
        let _ = write!(h, "<tr class=\"{}\">", d.kind.as_str());
        for c in cells(d) {
            let _ = write!(h, "<td>{}</td>", escape(&c));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n</body></html>\n");
    h
}
