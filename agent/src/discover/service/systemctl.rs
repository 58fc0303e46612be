//! Parsers for the three `systemctl` outputs the service collector reads: `list-units
//! --plain --no-legend`, `list-unit-files --no-legend` and `show -p …` (Key=Value blocks
//! separated by blank lines), plus the `ExecStart=` value format. Pure functions over text:
//! they never run anything, never panic on any input, and skip what they cannot parse with
//! a warning that names the output and the line.

use std::collections::BTreeMap;

/// The longest unit name systemd accepts (UNIT_NAME_MAX).
const UNIT_NAME_MAX: usize = 255;

/// One row of `systemctl list-units --plain --no-legend`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedUnit {
    pub name: String,
    pub load: String,
    pub active: String,
    pub sub: String,
    pub description: String,
}

/// The properties of one unit from `systemctl show` (only those the collector asks for).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShownUnit {
    pub id: String,
    pub props: BTreeMap<String, String>,
    /// Every `ExecStart=` line, in order (a oneshot service may have several).
    pub exec_start: Vec<String>,
}

impl ShownUnit {
    /// A property's value, `None` when absent or empty (systemctl prints `User=` for unset).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.props
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// The program and arguments of one `ExecStart=` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    /// The resolved program path (`path=`).
    pub path: String,
    /// The argument vector as systemctl prints it: the elements joined by single spaces.
    pub argv: String,
}

/// Whether `name` is a valid `.service` unit name that is safe to pass as an argument:
/// systemd's unit-name alphabet only (no whitespace, no '/', nothing a shell or getopt would
/// treat specially beyond a leading '-', which the caller guards with `--`).
pub fn is_service_name(name: &str) -> bool {
    name.len() <= UNIT_NAME_MAX
        && name.len() > ".service".len()
        && name.ends_with(".service")
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'-' | b'\\' | b'@')
        })
}

/// A template unit file ("getty@.service") is not a service instance.
pub fn is_template(name: &str) -> bool {
    name.ends_with("@.service")
}

/// Splits off the next whitespace-separated token, returning it and the rest.
fn token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

/// Drops a status bullet that older systemd versions print even with `--plain`.
fn strip_bullet(line: &str) -> &str {
    let t = line.trim_start();
    for bullet in ["●", "○", "×", "*"] {
        if let Some(rest) = t.strip_prefix(bullet)
            && rest.starts_with(char::is_whitespace)
        {
            return rest;
        }
    }
    t
}

/// Parses `systemctl list-units --type=service --all --plain --no-legend` output.
pub fn parse_list_units(text: &str) -> (Vec<ListedUnit>, Vec<String>) {
    let mut units = Vec::new();
    let mut warnings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line = strip_bullet(line);
        let fields = token(line).and_then(|(name, r)| {
            let (load, r) = token(r)?;
            let (active, r) = token(r)?;
            let (sub, r) = token(r)?;
            Some((name, load, active, sub, r.trim()))
        });
        let Some((name, load, active, sub, description)) = fields else {
            warnings.push(format!(
                "systemctl list-units line {}: expected UNIT LOAD ACTIVE SUB DESCRIPTION",
                n + 1
            ));
            continue;
        };
        if !is_service_name(name) {
            warnings.push(format!(
                "systemctl list-units line {}: not a valid service unit name",
                n + 1
            ));
            continue;
        }
        units.push(ListedUnit {
            name: name.to_owned(),
            load: load.to_owned(),
            active: active.to_owned(),
            sub: sub.to_owned(),
            description: description.to_owned(),
        });
    }
    (units, warnings)
}

/// Parses `systemctl list-unit-files --type=service --no-legend` output into
/// (unit file name, state) pairs. Templates and aliases are left out: a template is not a
/// service, and an alias is another name of a unit that is listed under its own name.
pub fn parse_list_unit_files(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((name, state)) = token(line).and_then(|(name, r)| Some((name, token(r)?.0)))
        else {
            warnings.push(format!(
                "systemctl list-unit-files line {}: expected UNIT-FILE STATE",
                n + 1
            ));
            continue;
        };
        if !is_service_name(name) {
            warnings.push(format!(
                "systemctl list-unit-files line {}: not a valid service unit name",
                n + 1
            ));
            continue;
        }
        if is_template(name) || state == "alias" {
            continue;
        }
        files.push((name.to_owned(), state.to_owned()));
    }
    (files, warnings)
}

/// Parses `systemctl show -p …` output: one block of `Key=Value` lines per unit, blocks
/// separated by blank lines, in the order the units were named.
pub fn parse_show(text: &str) -> (Vec<ShownUnit>, Vec<String>) {
    let mut units = Vec::new();
    let mut warnings = Vec::new();
    let mut block = ShowBlock::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            block.finish(&mut units, &mut warnings);
            continue;
        }
        if block.start == 0 {
            block.start = n + 1;
        }
        let Some((key, value)) = line.split_once('=') else {
            // One message per garbled block is enough.
            block.bad_line.get_or_insert(n + 1);
            continue;
        };
        let unit = &mut block.unit;
        match key {
            "Id" => value.clone_into(&mut unit.id),
            "ExecStart" => unit.exec_start.push(value.to_owned()),
            _ => {
                unit.props.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    block.finish(&mut units, &mut warnings);
    (units, warnings)
}

/// The block [`parse_show`] is reading; `start == 0` means none is open.
#[derive(Default)]
struct ShowBlock {
    unit: ShownUnit,
    start: usize,
    bad_line: Option<usize>,
}

impl ShowBlock {
    fn finish(&mut self, units: &mut Vec<ShownUnit>, warnings: &mut Vec<String>) {
        if self.start == 0 {
            return;
        }
        let done = std::mem::take(self);
        if let Some(n) = done.bad_line {
            warnings.push(format!("systemctl show line {n}: expected Key=Value"));
        }
        if done.unit.id.is_empty() {
            warnings.push(format!(
                "systemctl show block at line {}: no Id= property",
                done.start
            ));
        } else {
            units.push(done.unit);
        }
    }
}

/// Parses one `ExecStart=` value:
/// `{ path=/usr/sbin/sshd ; argv[]=/usr/sbin/sshd -D $SSHD_OPTS ; ignore_errors=no ; … }`.
/// Newer systemd prints `flags=` instead of `ignore_errors=` for the `…Ex` properties; both
/// end the argv. `None` when the value is empty or not in this format.
pub fn parse_exec(value: &str) -> Option<Exec> {
    let inner = value.trim().strip_prefix('{')?.trim_start();
    let inner = inner.strip_suffix('}').unwrap_or(inner).trim_end();
    let rest = inner.strip_prefix("path=")?;
    let (path, rest) = rest.split_once(" ; ")?;
    let rest = rest.strip_prefix("argv[]=")?;
    let end = [" ; ignore_errors=", " ; flags=", " ; start_time="]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    let path = path.trim();
    if path.is_empty() {
        return None;
    }
    Some(Exec {
        path: path.to_owned(),
        argv: rest[..end].trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn list_units_rows_with_padding_bullets_and_empty_descriptions() {
        let text = "\
cron.service                    loaded    active   running Regular background program processing daemon
● smartmontools.service         loaded    failed   failed  Self Monitoring and Reporting Technology (SMART) Daemon
nfs-common.service              masked    inactive dead    nfs-common.service
odd.service loaded active running
broken.service loaded
not/a.service loaded active running x
";
        let (units, warnings) = parse_list_units(text);
        assert_eq!(units.len(), 4);
        assert_eq!(units[0].name, "cron.service");
        assert_eq!(
            units[0].description,
            "Regular background program processing daemon"
        );
        assert_eq!(units[1].name, "smartmontools.service");
        assert_eq!(units[1].active, "failed");
        assert_eq!(units[2].load, "masked");
        assert_eq!(units[3].description, "");
        assert_eq!(
            warnings,
            vec![
                "systemctl list-units line 5: expected UNIT LOAD ACTIVE SUB DESCRIPTION",
                "systemctl list-units line 6: not a valid service unit name",
            ]
        );
    }

    #[test]
    fn list_unit_files_skip_templates_and_aliases() {
        let text = "\
cron.service                               enabled         enabled
getty@.service                             enabled         enabled
sshd.service                               alias           -
rsync.service                              disabled        disabled
old.service enabled
junk
";
        let (files, warnings) = parse_list_unit_files(text);
        assert_eq!(
            files,
            vec![
                ("cron.service".to_owned(), "enabled".to_owned()),
                ("rsync.service".to_owned(), "disabled".to_owned()),
                ("old.service".to_owned(), "enabled".to_owned()),
            ]
        );
        assert_eq!(
            warnings,
            vec!["systemctl list-unit-files line 6: expected UNIT-FILE STATE"]
        );
    }

    #[test]
    fn show_blocks_are_split_on_blank_lines() {
        let text = "\
MainPID=612
ExecStart={ path=/usr/sbin/sshd ; argv[]=/usr/sbin/sshd -D $SSHD_OPTS ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }
User=
Id=ssh.service
Description=OpenBSD Secure Shell server
UnitFileState=enabled

MainPID=0
Description=no id here

garbage line
Id=x.service
ExecStart={ path=/bin/true ; argv[]=/bin/true ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }
ExecStart={ path=/bin/echo ; argv[]=/bin/echo hi ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }
";
        let (units, warnings) = parse_show(text);
        assert_eq!(units.len(), 2);
        assert_eq!(units[0].id, "ssh.service");
        assert_eq!(units[0].get("MainPID"), Some("612"));
        assert_eq!(units[0].get("User"), None);
        assert_eq!(units[0].exec_start.len(), 1);
        assert_eq!(units[1].id, "x.service");
        assert_eq!(units[1].exec_start.len(), 2);
        assert_eq!(
            warnings,
            vec![
                "systemctl show block at line 8: no Id= property",
                "systemctl show line 11: expected Key=Value",
            ]
        );
    }

    #[test]
    fn exec_values() {
        let e = parse_exec("{ path=/usr/sbin/sshd ; argv[]=/usr/sbin/sshd -D $SSHD_OPTS ; ignore_errors=no ; start_time=[Mon 2024-05-06 09:12:31 UTC] ; stop_time=[n/a] ; pid=612 ; code=(null) ; status=0/0 }").unwrap();
        assert_eq!(e.path, "/usr/sbin/sshd");
        assert_eq!(e.argv, "/usr/sbin/sshd -D $SSHD_OPTS");
        let e = parse_exec("{ path=/usr/bin/foo ; argv[]=foo --opt=a;b ; flags=ignore-failure ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }").unwrap();
        assert_eq!(e.argv, "foo --opt=a;b");
        // A truncated value still yields what is there.
        let e = parse_exec("{ path=/bin/x ; argv[]=/bin/x -a").unwrap();
        assert_eq!(e.argv, "/bin/x -a");
        assert_eq!(parse_exec(""), None);
        assert_eq!(parse_exec("/usr/sbin/sshd -D"), None);
        assert_eq!(parse_exec("{ path= ; argv[]= ; ignore_errors=no }"), None);
    }

    #[test]
    fn unit_names() {
        assert!(is_service_name("ssh.service"));
        assert!(is_service_name(
            "systemd-fsck@dev-disk-by\\x2duuid-1234.service"
        ));
        assert!(is_service_name("user@1000.service"));
        assert!(!is_service_name(".service"));
        assert!(!is_service_name("ssh.socket"));
        assert!(!is_service_name("a b.service"));
        assert!(!is_service_name("../x.service"));
        assert!(!is_service_name(&format!("{}.service", "a".repeat(250))));
    }

    proptest! {
        #[test]
        fn list_parsers_never_panic_and_keep_valid_rows(s in any::<String>()) {
            let (units, w) = parse_list_units(&s);
            prop_assert!(units.len() + w.len() <= s.lines().count());
            for u in &units {
                prop_assert!(is_service_name(&u.name));
            }
            let (files, w) = parse_list_unit_files(&s);
            prop_assert!(files.len() + w.len() <= s.lines().count());
            let _ = parse_show(&s);
            let _ = parse_exec(&s);
        }

        #[test]
        fn generated_rows_round_trip(
            names in proptest::collection::btree_set("[a-z][a-z0-9@_-]{0,20}", 1..20),
            desc in "[ -~]{0,40}",
            pad in 1usize..6,
        ) {
            let sp = " ".repeat(pad);
            let text: String = names
                .iter()
                .map(|n| format!("{n}.service{sp}loaded{sp}active{sp}running{sp}{desc}\n"))
                .chain(std::iter::once("this line is junk\n".to_owned()))
                .collect();
            let (units, warnings) = parse_list_units(&text);
            prop_assert_eq!(units.len(), names.len());
            prop_assert_eq!(warnings.len(), 1);
            for (u, n) in units.iter().zip(&names) {
                prop_assert_eq!(&u.name, &format!("{n}.service"));
                prop_assert_eq!(u.description.as_str(), desc.trim());
            }
        }

        #[test]
        fn show_keeps_every_block_with_an_id(
            ids in proptest::collection::vec("[a-z]{1,12}", 0..20),
            pid in 0u32..100_000,
        ) {
            let text = ids
                .iter()
                .map(|id| format!("MainPID={pid}\nId={id}.service\nUser=\n"))
                .collect::<Vec<_>>()
                .join("\n");
            let (units, warnings) = parse_show(&text);
            prop_assert!(warnings.is_empty());
            prop_assert_eq!(units.len(), ids.len());
            for (u, id) in units.iter().zip(&ids) {
                prop_assert_eq!(&u.id, &format!("{id}.service"));
                let expected = pid.to_string();
                prop_assert_eq!(u.get("MainPID"), Some(expected.as_str()));
            }
        }

        #[test]
        fn exec_round_trips(
            path in "/[a-z/]{1,30}",
            args in proptest::collection::vec("[!-~&&[^;{}]]{1,10}", 0..6),
        ) {
            let argv = std::iter::once(path.clone()).chain(args).collect::<Vec<_>>().join(" ");
            let v = format!("{{ path={path} ; argv[]={argv} ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }}");
            let e = parse_exec(&v);
            prop_assert_eq!(e, Some(Exec { path: path.clone(), argv }));
        }
    }
}
