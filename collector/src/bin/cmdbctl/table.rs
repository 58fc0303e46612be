//! Plain-text tables: columns aligned, long cells cut with "…", and every cell made safe
//! for a terminal. Cells carry what agents observed on their hosts (file paths, package
//! descriptions), so control characters and bidirectional overrides are shown escaped,
//! never sent raw: a hostile host cannot move the cursor or reorder what the operator reads.
//!
//! Widths count `char`s; double-width characters (CJK, emoji) may misalign a column.

/// Default longest cell, in chars.
pub const MAX_CELL_CHARS: usize = 60;
/// Between columns.
const GAP: &str = "  ";

/// A table: optional header row, then rows; rendered with each column as wide as its widest
/// cell.
#[derive(Debug)]
pub struct Table {
    headers: Vec<String>,
    columns: usize,
    rows: Vec<Vec<String>>,
    max_cell: usize,
}

// === impl Table ===

impl Table {
    /// A table with a header row.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            columns: headers.len(),
            rows: Vec::new(),
            max_cell: MAX_CELL_CHARS,
        }
    }

    /// A table of `columns` columns without a header row (key/value listings).
    pub fn headerless(columns: usize) -> Self {
        Self {
            headers: Vec::new(),
            columns,
            rows: Vec::new(),
            max_cell: MAX_CELL_CHARS,
        }
    }

    /// Cells longer than `chars` are cut (at least 2).
    pub fn max_cell(mut self, chars: usize) -> Self {
        self.max_cell = chars.max(2);
        self
    }

    /// Adds a row; missing cells are blank, extra ones dropped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.columns)
            .map(|c| cell(c.as_ref(), self.max_cell))
            .collect();
        row.resize(self.columns, String::new());
        self.rows.push(row);
    }

    /// The table, one line per row, each ending in `\n`; no trailing blanks.
    pub fn render(&self) -> String {
        // Headers are ours and never cut.
        let header: Option<Vec<String>> = (!self.headers.is_empty())
            .then(|| self.headers.iter().map(|h| terminal_safe(h)).collect());
        let all = || header.iter().chain(self.rows.iter());
        let mut widths = vec![0usize; self.columns];
        for row in all() {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in all() {
            let mut line = String::new();
            for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str(GAP);
                }
                line.push_str(c);
                let pad = w.saturating_sub(c.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A cell: made terminal-safe, then cut to `max` chars with a final "…".
pub fn cell(text: &str, max: usize) -> String {
    let safe = terminal_safe(text);
    if safe.chars().count() <= max {
        return safe;
    }
    let mut cut: String = safe.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Control characters and bidi/zero-width format characters as visible escapes (`\n`,
/// `\u{1b}`, `\u{202e}`).
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || is_invisible_format(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// Characters that change how text around them is displayed while being invisible.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&["ID", "CLASS", "KEY"]);
        t.row(["ci-1", "package", "dpkg:bash:amd64"]);
        t.row(["ci-22", "os", "os"]);
        assert_eq!(
            t.render(),
            "ID     CLASS    KEY\n\
             ci-1   package  dpkg:bash:amd64\n\
             ci-22  os       os\n"
        );
    }

    #[test]
    fn headerless_and_ragged_rows() {
        let mut t = Table::headerless(2);
        t.row(["id", "agt-1"]);
        t.row(["last seen"]);
        t.row(["a", "b", "dropped"]);
        assert_eq!(t.render(), "id         agt-1\nlast seen\na          b\n");
        assert_eq!(Table::new(&["A"]).render(), "A\n");
    }

    #[test]
    fn cuts_long_cells() {
        let mut t = Table::new(&["K", "V"]).max_cell(5);
        t.row(["abcdefgh", "ok"]);
        assert_eq!(t.render(), "K      V\nabcd…  ok\n");
        // Headers are never cut.
        let mut t = Table::new(&["LONG HEADER"]).max_cell(2);
        t.row(["abc"]);
        assert_eq!(t.render(), "LONG HEADER\na…\n");
        assert_eq!(cell("héllo wörld", 6), "héllo…");
        assert_eq!(cell("exact", 5), "exact");
    }

    #[test]
    fn escapes_what_a_terminal_would_obey() {
        assert_eq!(terminal_safe("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(terminal_safe("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(terminal_safe("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(terminal_safe("naïve 日本"), "naïve 日本");
    }

    proptest! {
        #[test]
        fn rendered_tables_are_aligned_and_safe(
            rows in proptest::collection::vec(proptest::collection::vec("\\PC{0,12}|[a-z\\n\\x1b]{0,90}", 3), 0..8),
            max in 2usize..40,
        ) {
            let mut t = Table::new(&["ONE", "TWO", "THREE"]).max_cell(max);
            for r in &rows {
                t.row(r);
            }
            let text = t.render();
            let lines: Vec<&str> = text.lines().collect();
            prop_assert_eq!(lines.len(), rows.len() + 1);
            for line in &lines {
                prop_assert!(!line.chars().any(|c| c.is_control() || is_invisible_format(c)), "{:?}", line);
                prop_assert!(!line.ends_with(' '));
            }
            // Column 2 starts at the same char offset on every line: cells are padded to
            // the column width (only trailing blanks of a line are trimmed).
            let width0 = std::iter::once("ONE".to_owned())
                .chain(rows.iter().map(|r| cell(&r[0], max)))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0);
            for (line, r) in lines.iter().skip(1).zip(&rows) {
                let c0 = cell(&r[0], max);
                let rest: String = line.chars().skip(width0 + GAP.len()).collect();
                let c1 = cell(&r[1], max);
                prop_assert!(line.starts_with(c0.trim_end()));
                prop_assert!(rest.starts_with(c1.trim_end()), "{:?} / {:?}", line, c1);
                for c in r {
                    prop_assert!(cell(c, max).chars().count() <= max);
                }
            }
        }
    }
}
