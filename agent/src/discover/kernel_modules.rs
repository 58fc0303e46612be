//! The `kernel_modules` collector: loaded kernel modules from /proc/modules, one CI per
//! module name with its size, the modules using it, its state and taint flags.
//!
//! The reference count and load address are left out on purpose: the count changes with
//! every open device and the address is hidden from non-root readers (and randomised), so
//! both would be drift noise, not configuration. Modules built into the kernel are not in
//! /proc/modules and are not reported. A host without /proc/modules (a kernel without
//! loadable module support) is `unsupported`, never "no modules".

use cmdb_proto::model::{Item, class};

use super::{Collector, Context, Outcome};

pub struct KernelModuleCollector;

impl Collector for KernelModuleCollector {
    fn name(&self) -> &'static str {
        "kernel_modules"
    }
    fn classes(&self) -> &'static [&'static str] {
        &[class::KERNEL_MODULE]
    }
    fn collect(&self, ctx: &Context) -> Outcome {
        let text = match ctx.root.read_to_string("/proc/modules") {
            Ok(t) => t,
            Err(e) if e.is_not_found() => {
                return Outcome::unsupported(
                    "no /proc/modules (kernel without loadable module support)",
                );
            }
            Err(e) if e.is_permission_denied() => {
                let mut o = Outcome::new();
                o.permission_denied(e.to_string());
                return o;
            }
            Err(e) => return Outcome::error(e.to_string()),
        };
        let (modules, bad) = parse_modules(&text);
        let mut out = Outcome::new();
        for b in bad {
            out.warn(b.to_string());
        }
        for m in modules {
            out.push(
                Item::new(class::KERNEL_MODULE, m.name.clone())
                    .with("name", m.name)
                    .with("size", m.size)
                    .with("used_by", m.used_by)
                    .with("state", m.state.as_str())
                    .with("permanent", m.permanent)
                    .with("taint", m.taint),
            );
        }
        out
    }
}

/// A module's life-cycle state as /proc/modules prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleState {
    Live,
    Loading,
    Unloading,
}

impl ModuleState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleState::Live => "Live",
            ModuleState::Loading => "Loading",
            ModuleState::Unloading => "Unloading",
        }
    }
}

/// One /proc/modules line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// Memory size in bytes.
    pub size: u64,
    /// Modules that depend on this one, sorted (the kernel lists them comma-terminated in
    /// load order, or "-").
    pub used_by: Vec<String>,
    /// The kernel's "[permanent]" marker: the module has no exit routine and can never be
    /// unloaded.
    pub permanent: bool,
    pub state: ModuleState,
    /// Taint flags without the parentheses ("OE" for an out-of-tree unsigned module).
    pub taint: Option<String>,
}

/// A line that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("/proc/modules line {line}: {reason}")]
pub struct BadLine {
    pub line: usize,
    pub reason: &'static str,
}

/// Parses /proc/modules: `name size refcount used_by state address [(taint)]`.
pub fn parse_modules(text: &str) -> (Vec<Module>, Vec<BadLine>) {
    let mut modules = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(m) => modules.push(m),
            Err(reason) => bad.push(BadLine {
                line: n + 1,
                reason,
            }),
        }
    }
    (modules, bad)
}

fn parse_line(line: &str) -> Result<Module, &'static str> {
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    // The address is always printed by current kernels, but nothing here needs it.
    let [name, size, _refcount, used_by, state, rest @ ..] = f.as_slice() else {
        return Err("expected at least 5 fields");
    };
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("bad module name");
    }
    if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err("size is not a number");
    }
    let size = size.parse::<u64>().map_err(|_| "size is not a number")?;
    let state = match *state {
        "Live" => ModuleState::Live,
        "Loading" => ModuleState::Loading,
        "Unloading" => ModuleState::Unloading,
        _ => return Err("unknown state"),
    };
    let mut permanent = false;
    let mut users = Vec::new();
    if *used_by != "-" {
        for u in used_by.split(',').filter(|u| !u.is_empty()) {
            if u == "[permanent]" {
                permanent = true;
            } else {
                users.push(u.to_owned());
            }
        }
    }
    // The kernel lists users in load order; sorted, the attribute is stable across boots.
    users.sort();
    users.dedup();
    let taint = rest
        .iter()
        .find_map(|t| t.strip_prefix('(').and_then(|t| t.strip_suffix(')')))
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    Ok(Module {
        name: (*name).to_owned(),
        size,
        used_by: users,
        permanent,
        state,
        taint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_real_lines() {
        let text = "iwlmvm 577536 0 - Live 0x0000000000000000\n\
cfg80211 1327104 3 mac80211,iwlmvm,iwlwifi, Live 0xffffffffc0a00000\n\
vboxdrv 696320 2 vboxnetadp,vboxnetflt, Live 0x0000000000000000 (OE)\n\
crc32c_intel 24576 3 [permanent], Live 0x0000000000000000\n\
dying 4096 0 - Unloading 0x0000000000000000\n\
nomodunload 4096 - - Live 0x0\n";
        let (m, bad) = parse_modules(text);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(m.len(), 6);
        assert!(m[0].used_by.is_empty());
        assert_eq!(m[1].used_by, vec!["iwlmvm", "iwlwifi", "mac80211"]);
        assert_eq!(m[1].size, 1_327_104);
        assert_eq!(m[2].taint.as_deref(), Some("OE"));
        assert!(m[3].permanent && m[3].used_by.is_empty());
        assert_eq!(m[4].state, ModuleState::Unloading);
        assert_eq!(m[5].name, "nomodunload");
    }

    #[test]
    fn bad_lines_are_reported_and_the_rest_kept() {
        let (m, bad) = parse_modules(
            "ok 1 0 - Live 0x0\nshort 1 0\nbig x 0 - Live 0x0\nweird 1 0 - Sleeping 0x0\nbad/name 1 0 - Live 0x0\n",
        );
        assert_eq!(m.len(), 1);
        let lines: Vec<(usize, &str)> = bad.iter().map(|b| (b.line, b.reason)).collect();
        assert_eq!(
            lines,
            vec![
                (2, "expected at least 5 fields"),
                (3, "size is not a number"),
                (4, "unknown state"),
                (5, "bad module name")
            ]
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in any::<String>()) {
            let (m, bad) = parse_modules(&s);
            prop_assert!(m.len() + bad.len() <= s.lines().count());
        }

        #[test]
        fn well_formed_lines_round_trip(
            name in "[a-z][a-z0-9_]{0,20}", size in any::<u64>(),
            users in proptest::collection::vec("[a-z][a-z0-9_]{0,10}", 0..5),
            taint in proptest::option::of("[A-Z]{1,4}")
        ) {
            let used_by = if users.is_empty() { "-".to_owned() } else { format!("{},", users.join(",")) };
            let mut line = format!("{name} {size} {} {used_by} Live 0x0000000000000000", users.len());
            if let Some(t) = &taint {
                line.push_str(&format!(" ({t})"));
            }
            let (m, bad) = parse_modules(&line);
            prop_assert!(bad.is_empty());
            prop_assert_eq!(&m[0].name, &name);
            prop_assert_eq!(m[0].size, size);
            let mut sorted = users.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&m[0].used_by, &sorted);
            prop_assert_eq!(&m[0].taint, &taint);
        }
    }
}
