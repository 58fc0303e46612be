//! `systemd_unit` monitors: up when the unit's ActiveState is `active` (or `reloading`: a
//! unit re-reading its configuration keeps serving, and a round that happens to fall into a
//! reload must not read as an outage). One `systemctl show` run answers every unit monitor
//! of a round, through [`crate::command::run`] (timeout, output cap, clean locale) with the
//! same property list and parser as the `service` collector.
//!
//! Where systemd does not run (no /run/systemd/system under the host root, the test
//! `sd_booted()` makes) every unit monitor is `unknown`, and so it is when `systemctl` fails,
//! hangs or is missing: none of those says anything about the unit. A unit the manager does
//! not know (LoadState=not-found) is `down`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{MonitorSpec, Verdict};
use crate::command;
use crate::discover::service::{SHOW_PROPERTIES, ShownUnit, Systemctl, parse_show};
use crate::hostroot::HostRoot;

/// One verdict per spec, in order.
pub fn check(
    root: &HostRoot,
    sc: &Systemctl,
    timeout: Duration,
    specs: &[&MonitorSpec],
) -> Vec<Verdict> {
    if !root.exists("/run/systemd/system") {
        return vec![
            Verdict::unknown("systemd is not running (no /run/systemd/system)");
            specs.len()
        ];
    }
    let mut args = vec!["show", "--no-pager", "-p", SHOW_PROPERTIES, "--"];
    args.extend(specs.iter().map(|s| s.target.as_str()));
    let text = match command::run(&sc.program, &args, timeout, sc.output_cap) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => return vec![Verdict::unknown(e.to_string()); specs.len()],
    };
    let (blocks, _) = parse_show(&text);
    if blocks.len() == specs.len() {
        // Blocks come back in the order asked (an alias is answered under the real Id).
        return blocks.iter().map(verdict).collect();
    }
    // Should not happen; match by Id ("nginx" is shown as "nginx.service").
    let by_id: BTreeMap<&str, &ShownUnit> = blocks.iter().map(|b| (b.id.as_str(), b)).collect();
    specs
        .iter()
        .map(|s| {
            by_id
                .get(s.target.as_str())
                .or_else(|| by_id.get(format!("{}.service", s.target).as_str()))
                .map_or_else(
                    || Verdict::unknown("systemctl show said nothing about the unit"),
                    |b| verdict(b),
                )
        })
        .collect()
}

fn verdict(unit: &ShownUnit) -> Verdict {
    let (load, active, sub) = (
        unit.get("LoadState").unwrap_or(""),
        unit.get("ActiveState").unwrap_or(""),
        unit.get("SubState").unwrap_or(""),
    );
    match (load, active) {
        ("not-found", _) => Verdict::down("unit not found (LoadState=not-found)"),
        (_, "active" | "reloading") => Verdict::up(format!("ActiveState={active} SubState={sub}")),
        (_, "") => Verdict::unknown("systemctl show gave no ActiveState"),
        _ => Verdict::down(format!("ActiveState={active} SubState={sub}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{MonitorKind, MonitorStatus};
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn specs(units: &[&str]) -> Vec<MonitorSpec> {
        units
            .iter()
            .map(|u| MonitorSpec {
                name: (*u).into(),
                kind: MonitorKind::SystemdUnit,
                target: (*u).into(),
            })
            .collect()
    }

    /// The fake systemctl answering from show.txt captured on a Debian 12 host.
    fn debian12(dir: &Path) -> Systemctl {
        let p = dir.join("systemctl");
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nFAKE_SYSTEMCTL_DATA={} exec {} \"$@\"\n",
                fixtures().join("systemd/debian12").display(),
                fixtures().join("systemd/bin/systemctl").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Systemctl {
            program: p.to_string_lossy().into_owned(),
            ..Systemctl::default()
        }
    }

    fn run(root: &Path, sc: &Systemctl, units: &[&str]) -> Vec<Verdict> {
        let s = specs(units);
        let refs: Vec<&MonitorSpec> = s.iter().collect();
        check(&HostRoot::new(root), sc, Duration::from_secs(5), &refs)
    }

    #[test]
    fn active_failed_inactive_and_unknown_units() {
        let tmp = tempfile::tempdir().unwrap();
        let sc = debian12(tmp.path());
        let root = fixtures().join("debian12");
        let v = run(
            &root,
            &sc,
            &[
                "ssh.service",
                "smartmontools.service",
                "rsync.service",
                "apparmor.service",
                "nginx.service",
            ],
        );
        assert_eq!(v[0], Verdict::up("ActiveState=active SubState=running"));
        assert_eq!(v[1], Verdict::down("ActiveState=failed SubState=failed"));
        assert_eq!(v[2], Verdict::down("ActiveState=inactive SubState=dead"));
        assert_eq!(v[3], Verdict::up("ActiveState=active SubState=exited"));
        assert_eq!(v[4], Verdict::down("unit not found (LoadState=not-found)"));
    }

    #[test]
    fn no_systemd_or_a_failing_systemctl_is_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        let sc = debian12(tmp.path());
        let v = run(tmp.path(), &sc, &["ssh.service"]);
        assert_eq!(
            v[0],
            Verdict::unknown("systemd is not running (no /run/systemd/system)")
        );
        let root = fixtures().join("debian12");
        let missing = Systemctl {
            program: "/nonexistent/systemctl".into(),
            ..Systemctl::default()
        };
        let v = run(&root, &missing, &["ssh.service", "cron.service"]);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].status, MonitorStatus::Unknown);
        assert_eq!(v[1].detail, "/nonexistent/systemctl: not found");
    }

    #[test]
    fn reloading_is_up() {
        let u = ShownUnit {
            id: "nginx.service".into(),
            props: [
                ("LoadState", "loaded"),
                ("ActiveState", "reloading"),
                ("SubState", "reload"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            exec_start: Vec::new(),
        };
        assert_eq!(verdict(&u).status, MonitorStatus::Up);
        assert_eq!(
            verdict(&ShownUnit::default()),
            Verdict::unknown("systemctl show gave no ActiveState")
        );
    }
}
