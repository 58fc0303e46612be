//! The os-release(5) format: `KEY=value` lines, `#` comments and blank lines, values quoted
//! and escaped the way a POSIX shell reads them (double quotes honour `\$ \" \\ \``,
//! single quotes are literal, a bare backslash escapes the next character). Pure parsing:
//! a malformed line is skipped with a warning and the rest is kept; later assignments of a
//! key win, as they would in a shell.

/// The parsed assignments, in file order.
pub type Assignments = Vec<(String, String)>;

/// Parses os-release text into (assignments, warnings "line N: reason").
pub fn parse(text: &str) -> (Assignments, Vec<String>) {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            warnings.push(format!("line {}: no '=' in assignment", n + 1));
            continue;
        };
        if !valid_key(key) {
            warnings.push(format!("line {}: invalid variable name {key:?}", n + 1));
            continue;
        }
        match unquote(raw) {
            Ok(v) => out.push((key.to_owned(), v)),
            Err(reason) => warnings.push(format!("line {}: {key}: {reason}", n + 1)),
        }
    }
    (out, warnings)
}

/// The last value assigned to `key`.
pub fn get<'a>(a: &'a Assignments, key: &str) -> Option<&'a str> {
    a.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn valid_key(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// Reads one shell word: quotes removed, escapes applied; trailing whitespace and a
/// trailing `# comment` are allowed, anything else after unquoted whitespace is not.
fn unquote(raw: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(raw.len());
    let mut state = Quote::None;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match (state, c) {
            (Quote::None, '\\') => match chars.next() {
                Some(next) => out.push(next),
                None => return Err("trailing backslash"),
            },
            (Quote::None, '"') => state = Quote::Double,
            (Quote::None, '\'') => state = Quote::Single,
            (Quote::None, c) if c.is_whitespace() => {
                let rest = chars.as_str().trim_start();
                return if rest.is_empty() || rest.starts_with('#') {
                    Ok(out)
                } else {
                    Err("unquoted whitespace in value")
                };
            }
            (Quote::None, c) => out.push(c),
            (Quote::Single, '\'') => state = Quote::None,
            (Quote::Single, c) => out.push(c),
            (Quote::Double, '"') => state = Quote::None,
            (Quote::Double, '\\') => match chars.next() {
                Some(next @ ('$' | '"' | '\\' | '`')) => out.push(next),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => return Err("unterminated double quote"),
            },
            (Quote::Double, c) => out.push(c),
        }
    }
    match state {
        Quote::None => Ok(out),
        Quote::Single => Err("unterminated single quote"),
        Quote::Double => Err("unterminated double quote"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_real_files() {
        let text = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
# a comment
HOME_URL="https://www.debian.org/"
"#;
        let (a, w) = parse(text);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(get(&a, "NAME"), Some("Debian GNU/Linux"));
        assert_eq!(get(&a, "VERSION_CODENAME"), Some("bookworm"));
        assert_eq!(get(&a, "ID"), Some("debian"));
        assert_eq!(get(&a, "ID_LIKE"), None);
    }

    #[test]
    fn quotes_and_escapes_follow_the_shell() {
        let (a, w) = parse(
            "A='single $x \\n'\nB=\"dq \\\"q\\\" \\$HOME \\\\ \\n\"\nC=bare\\ word\nD=\"a\"'b'c\nE=\nF=x # comment\n",
        );
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(get(&a, "A"), Some("single $x \\n"));
        assert_eq!(get(&a, "B"), Some("dq \"q\" $HOME \\ \\n"));
        assert_eq!(get(&a, "C"), Some("bare word"));
        assert_eq!(get(&a, "D"), Some("abc"));
        assert_eq!(get(&a, "E"), Some(""));
        assert_eq!(get(&a, "F"), Some("x"));
    }

    #[test]
    fn malformed_lines_are_skipped_with_a_warning() {
        let (a, w) = parse("NAME=\"Open\nID=fine\n1BAD=x\nno equals\nX=two words\nID=later\n");
        assert_eq!(get(&a, "ID"), Some("later"), "later assignments win");
        assert_eq!(get(&a, "NAME"), None);
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[0].starts_with("line 1: NAME: unterminated double quote"));
        assert!(w[1].starts_with("line 3: invalid variable name"));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let (a, w) = parse(&text);
            prop_assert!(a.len() + w.len() <= text.lines().count());
        }

        #[test]
        fn quoted_values_round_trip(v in "[^\"\\\\$`\n]{0,40}") {
            let (a, w) = parse(&format!("K=\"{v}\"\n"));
            prop_assert!(w.is_empty());
            prop_assert_eq!(get(&a, "K"), Some(v.as_str()));
        }
    }
}
