//! Service monitors as agent and collector both see them: what a monitor is ([`MonitorSpec`]),
//! which specs are acceptable ([`MonitorSpec::check`], [`check_set`]) and the status values
//! a `monitor` CI reports ([`MonitorStatus`]).
//!
//! A monitor is evaluated on the agent and reported as a CI of class `monitor`, keyed by its
//! name, with the attributes `kind`, `target`, `status` and `detail`. The same checks apply to
//! monitors from the agent's own `agent.toml` (where a bad one is a configuration error) and
//! to those the collector sends in `Config` (where a bad one is skipped and logged), so that
//! both sides agree on what is valid.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The most monitors one agent evaluates (its own and the collector's together).
pub const MAX_MONITORS: usize = 256;
/// The longest monitor name, in bytes (the name is the CI key).
pub const MAX_NAME_BYTES: usize = 128;
/// The longest systemd unit name (systemd's own limit, UNIT_NAME_MAX - 1).
pub const MAX_UNIT_BYTES: usize = 255;
/// The longest process target: a file name (NAME_MAX) or an absolute path (PATH_MAX - 1).
pub const MAX_PROCESS_NAME_BYTES: usize = 255;
pub const MAX_PROCESS_PATH_BYTES: usize = 4095;

/// What a monitor checks. TOML and JSON spell it in snake_case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorKind {
    /// A systemd unit; up when its ActiveState is `active` (or `reloading`).
    SystemdUnit,
    /// A process by executable base name or absolute path; up when at least one matches.
    Process,
    /// A TCP port; up when a socket listens on it (IPv4 or IPv6).
    TcpPort,
}

impl MonitorKind {
    /// The `kind` attribute value ("systemd_unit", "process", "tcp_port").
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorKind::SystemdUnit => "systemd_unit",
            MonitorKind::Process => "process",
            MonitorKind::TcpPort => "tcp_port",
        }
    }
}

impl fmt::Display for MonitorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One monitor: a name (the CI key), what it checks and the thing it checks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSpec {
    pub name: String,
    pub kind: MonitorKind,
    pub target: String,
}

/// The `status` attribute of a `monitor` CI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorStatus {
    /// The checked thing is there (unit active, process running, port listening).
    Up,
    /// The check ran and the thing is not there.
    Down,
    /// The check could not tell (no systemd, unreadable /proc, a timed-out check).
    Unknown,
}

impl MonitorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MonitorStatus::Up => "up",
            MonitorStatus::Down => "down",
            MonitorStatus::Unknown => "unknown",
        }
    }
}

impl fmt::Display for MonitorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a spec is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMonitor {
    /// The name is empty, too long or not printable.
    #[error("{0}")]
    Name(String),
    /// The target is not something this kind can check.
    #[error("{0}")]
    Target(String),
    /// Another monitor of the set already has this name.
    #[error("duplicate monitor name {0:?}")]
    Duplicate(String),
    /// The set holds more than [`MAX_MONITORS`].
    #[error("at most {MAX_MONITORS} monitors")]
    TooMany,
}

impl InvalidMonitor {
    /// The spec field the problem is in ("name" or "target"), for error positions.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            InvalidMonitor::Name(_) | InvalidMonitor::Duplicate(_) => Some("name"),
            InvalidMonitor::Target(_) => Some("target"),
            InvalidMonitor::TooMany => None,
        }
    }
}

impl MonitorSpec {
    /// Checks the name and that the target suits the kind.
    pub fn check(&self) -> Result<(), InvalidMonitor> {
        check_name(&self.name).map_err(InvalidMonitor::Name)?;
        let t = &self.target;
        let target = |m: String| Err(InvalidMonitor::Target(m));
        match self.kind {
            MonitorKind::SystemdUnit => {
                if t.is_empty() || t.len() > MAX_UNIT_BYTES {
                    return target(format!(
                        "a systemd unit name has 1 to {MAX_UNIT_BYTES} bytes"
                    ));
                }
                if t.starts_with(['-', '.'])
                    || !t
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b":-_.@\\".contains(&b))
                {
                    return target(format!(
                        "{t:?} is not a systemd unit name (letters, digits and :-_.@\\ only)"
                    ));
                }
            }
            MonitorKind::Process => {
                if t.chars().any(char::is_control) {
                    return target("a process target must not contain control characters".into());
                }
                if let Some(rest) = t.strip_prefix('/') {
                    if t.len() > MAX_PROCESS_PATH_BYTES {
                        return target(format!(
                            "an executable path has at most {MAX_PROCESS_PATH_BYTES} bytes"
                        ));
                    }
                    // /proc/<pid>/exe always names a normalised path: anything else never matches.
                    if rest
                        .split('/')
                        .any(|c| c.is_empty() || c == "." || c == "..")
                    {
                        return target(format!(
                            "{t:?} is not a normalised absolute path (no //, /./, /../ or trailing /)"
                        ));
                    }
                } else {
                    if t.is_empty() || t.len() > MAX_PROCESS_NAME_BYTES {
                        return target(format!(
                            "an executable name has 1 to {MAX_PROCESS_NAME_BYTES} bytes"
                        ));
                    }
                    if t.contains('/') || t == "." || t == ".." {
                        return target(format!(
                            "{t:?} is neither an executable's base name nor an absolute path"
                        ));
                    }
                }
            }
            MonitorKind::TcpPort => {
                if self.port().is_none() {
                    return target(format!("{t:?} is not a port number in 1..=65535"));
                }
            }
        }
        Ok(())
    }

    /// The port of a `tcp_port` monitor: the target as a canonical decimal in 1..=65535.
    pub fn port(&self) -> Option<u16> {
        let t = &self.target;
        if self.kind != MonitorKind::TcpPort
            || t.is_empty()
            || t.len() > 5
            || !t.bytes().all(|b| b.is_ascii_digit())
            || t.starts_with('0')
        {
            return None;
        }
        t.parse::<u16>().ok().filter(|p| *p > 0)
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("a monitor name has 1 to {MAX_NAME_BYTES} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err("a monitor name must not contain control characters".into());
    }
    if name.trim() != name {
        return Err(format!(
            "{name:?} starts or ends with white space (it is the CI key)"
        ));
    }
    Ok(())
}

/// Checks every spec, then that names are unique and the set is bounded. `Err` names the
/// index of the first offending spec (for [`InvalidMonitor::TooMany`], the first one over).
pub fn check_set(specs: &[MonitorSpec]) -> Result<(), (usize, InvalidMonitor)> {
    let mut names = BTreeSet::new();
    for (i, s) in specs.iter().enumerate() {
        s.check().map_err(|e| (i, e))?;
        if !names.insert(s.name.as_str()) {
            return Err((i, InvalidMonitor::Duplicate(s.name.clone())));
        }
    }
    if specs.len() > MAX_MONITORS {
        return Err((MAX_MONITORS, InvalidMonitor::TooMany));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: MonitorKind, target: &str) -> MonitorSpec {
        MonitorSpec {
            name: "m".into(),
            kind,
            target: target.into(),
        }
    }

    #[test]
    fn targets_are_checked_per_kind() {
        use MonitorKind::*;
        for (kind, t) in [
            (SystemdUnit, "nginx.service"),
            (SystemdUnit, "getty@tty1.service"),
            (SystemdUnit, "nginx"),
            (Process, "nginx"),
            (Process, "/usr/sbin/nginx"),
            (Process, "systemd-journald"),
            (TcpPort, "1"),
            (TcpPort, "65535"),
        ] {
            assert_eq!(spec(kind, t).check(), Ok(()), "{kind} {t}");
        }
        for (kind, t) in [
            (SystemdUnit, ""),
            (SystemdUnit, "-H"),
            (SystemdUnit, "a b.service"),
            (SystemdUnit, "/etc/x"),
            (Process, ""),
            (Process, "bin/nginx"),
            (Process, "/usr//sbin/nginx"),
            (Process, "/usr/sbin/"),
            (Process, "/usr/../sbin/nginx"),
            (Process, "ng\ninx"),
            (TcpPort, "0"),
            (TcpPort, "65536"),
            (TcpPort, "080"),
            (TcpPort, "+80"),
            (TcpPort, " 80"),
            (TcpPort, "http"),
        ] {
            let e = spec(kind, t).check().unwrap_err();
            assert_eq!(e.field(), Some("target"), "{kind} {t:?}: {e}");
        }
        assert_eq!(spec(TcpPort, "8080").port(), Some(8080));
        assert_eq!(spec(Process, "8080").port(), None);
    }

    #[test]
    fn names_are_bounded_printable_and_unique() {
        let mut s = spec(MonitorKind::TcpPort, "22");
        for bad in ["", " ssh", "ssh\t", "a\u{7}b"] {
            s.name = bad.into();
            assert!(matches!(s.check(), Err(InvalidMonitor::Name(_))), "{bad:?}");
        }
        s.name = "x".repeat(MAX_NAME_BYTES);
        assert_eq!(s.check(), Ok(()));
        s.name.push('x');
        assert!(s.check().is_err());

        let a = spec(MonitorKind::TcpPort, "22");
        let mut b = spec(MonitorKind::Process, "sshd");
        assert_eq!(
            check_set(&[a.clone(), b.clone()]),
            Err((1, InvalidMonitor::Duplicate("m".into())))
        );
        b.name = "n".into();
        assert_eq!(check_set(&[a, b]), Ok(()));
        let many: Vec<MonitorSpec> = (0..=MAX_MONITORS)
            .map(|i| MonitorSpec {
                name: format!("m{i}"),
                kind: MonitorKind::TcpPort,
                target: "22".into(),
            })
            .collect();
        assert_eq!(
            check_set(&many),
            Err((MAX_MONITORS, InvalidMonitor::TooMany))
        );
        assert_eq!(check_set(&many[..MAX_MONITORS]), Ok(()));
    }
}
