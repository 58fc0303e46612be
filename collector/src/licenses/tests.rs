//! The licence service's persistence, audit and all-or-nothing imports, on the
//! records-only test store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::store::memory::MemoryRecords;

type Audit = crate::judgment::RecordedActions;

fn admin() -> Actor {
    Actor {
        name: "alice".into(),
        role: "admin".into(),
    }
}

const CSV: &str = "contract,vendor,product,metric,quantity,expires\n\
                   EA-1,Microsoft,SQL Server,per-core,16,2030-01-20\n\
                   EA-2,Oracle,Java SE,per-core,8,\n";

#[test]
fn writes_persist_and_are_audited() {
    let store = Arc::new(MemoryRecords::default());
    let audit = Arc::new(Audit::default());
    let l = Licenses::open(
        store.clone(),
        None,
        Some(audit.clone() as Arc<dyn AuditSink>),
        LicenseSettings::default(),
    )
    .unwrap();
    let ents = entitlements::parse_csv(CSV.as_bytes()).unwrap();
    l.import(&admin(), ents, false).unwrap();
    let lists: Lists = serde_json::from_str(r#"{"deny":[{"product":"TeamViewer"}]}"#).unwrap();
    l.set_lists(&admin(), lists.clone()).unwrap();
    let rules = RuleSet {
        rules: vec![normalise::Rule {
            package: "acme-*".into(),
            package_vendor: None,
            vendor: "Acme".into(),
            product: "Suite".into(),
            edition: String::new(),
            licensable: true,
            metric: entitlements::Metric::PerHost,
        }],
    };
    l.set_rules(&admin(), rules.clone()).unwrap();
    assert_eq!(
        *audit.entries.lock().unwrap(),
        vec![
            "licenses.entitlements.import",
            "licenses.lists.set",
            "licenses.rules.set"
        ]
    );
    let again = Licenses::open(store, None, None, LicenseSettings::default()).unwrap();
    assert_eq!(again.entitlements().len(), 2);
    assert_eq!(again.lists(), lists);
    assert_eq!(again.rules(), rules);
}

#[test]
fn a_refused_audit_entry_changes_nothing() {
    let store = Arc::new(MemoryRecords::default());
    let audit = Arc::new(Audit {
        refuse: true,
        ..Audit::default()
    });
    let l = Licenses::open(
        store.clone(),
        None,
        Some(audit as Arc<dyn AuditSink>),
        LicenseSettings::default(),
    )
    .unwrap();
    let ents = entitlements::parse_csv(CSV.as_bytes()).unwrap();
    assert!(matches!(
        l.import(&admin(), ents, false),
        Err(LicenseError::Audit(_))
    ));
    assert!(l.entitlements().is_empty());
    assert!(store.all(COLLECTION).is_empty());
}

#[test]
fn a_failing_store_changes_nothing() {
    let store = Arc::new(MemoryRecords::default());
    let l = Licenses::open(store.clone(), None, None, LicenseSettings::default()).unwrap();
    store
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let ents = entitlements::parse_csv(CSV.as_bytes()).unwrap();
    assert!(l.import(&admin(), ents, true).is_err());
    assert!(l.entitlements().is_empty());
}

#[test]
fn expiring_lists_and_announces_once() {
    let store = Arc::new(MemoryRecords::default());
    let l = Licenses::open(store.clone(), None, None, LicenseSettings::default()).unwrap();
    l.import(
        &admin(),
        entitlements::parse_csv(CSV.as_bytes()).unwrap(),
        false,
    )
    .unwrap();
    let now = entitlements::parse_day("2030-01-01").unwrap();
    let e = l.expiring(now, None);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].entitlement.contract, "EA-1");
    assert_eq!(e[0].days_left, 20);
    assert!(!e[0].announced);
    assert_eq!(l.announce(now).unwrap(), 1);
    assert_eq!(l.announce(now).unwrap(), 0);
    // Remembered across a restart.
    let again = Licenses::open(store, None, None, LicenseSettings::default()).unwrap();
    assert!(again.expiring(now, None)[0].announced);
    assert_eq!(again.announce(now).unwrap(), 0);
    assert!(
        l.expiring(now, Some(Duration::from_secs(86_400)))
            .is_empty()
    );
}

#[test]
fn files_replace_the_stored_rules_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rules]]\npackage = \"acme-*\"\nvendor = \"Acme\"\nproduct = \"Suite\"\nlicensable = true\nmetric = \"per-user\"\n",
    )
    .unwrap();
    let lists = dir.path().join("lists.json");
    std::fs::write(&lists, r#"{"allow":[{"vendor":"Acme"}]}"#).unwrap();
    let store = Arc::new(MemoryRecords::default());
    let settings = LicenseSettings {
        rules_file: Some(rules),
        lists_file: Some(lists.clone()),
        ..LicenseSettings::default()
    };
    let l = Licenses::open(store.clone(), None, None, settings.clone()).unwrap();
    assert_eq!(l.rules().rules[0].metric, entitlements::Metric::PerUser);
    assert_eq!(l.lists().allow.len(), 1);
    std::fs::write(&lists, r#"{"allow":[{}]}"#).unwrap();
    let e = Licenses::open(store, None, None, settings).err().unwrap();
    assert!(e.to_string().contains("allow entry 1"), "{e}");
}

#[test]
fn the_policy_deny_list_leaves_licence_alerts_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(crate::store::sled::SledStore::open(dir.path(), 16 << 20).unwrap());
    let j = Arc::new(
        Judgment::open(
            Arc::clone(&store),
            crate::judgment::JudgmentSettings::default(),
            None,
            None,
        )
        .unwrap(),
    );
    let at = SystemTime::now();
    let number = j
        .raise_alerts(&[ExternalAlert {
            kind: AlertKind::Denied,
            host_id: "h1".into(),
            ci_id: crate::store::ci_id("h1", "package", "dpkg:teamviewer:amd64"),
            class: ALERT_CLASS.into(),
            key: "dpkg:teamviewer:amd64".into(),
            summary: "deny-listed".into(),
            at,
        }])
        .unwrap()
        .remove(0);
    // A policy deny-list change recovers the engine's own denied alerts it no longer
    // matches, never the licence module's.
    let mut p = serde_json::to_value(j.policies()).unwrap();
    p["deny"] = serde_json::json!([{"selector": "class=package key=dpkg:telnetd:*", "reason": "cleartext"}]);
    j.set_policies(&admin(), serde_json::from_value(p).unwrap())
        .unwrap();
    assert!(j.incident(&number).unwrap().state.is_open());
    // The licence module's view at start: the firing alert is known, so a refresh that
    // no longer finds the install clears it.
    let l = Licenses::open(
        store,
        Some(Arc::clone(&j)),
        None,
        LicenseSettings::default(),
    )
    .unwrap();
    assert!(
        l.firing
            .lock()
            .unwrap()
            .contains(&("h1".to_owned(), "dpkg:teamviewer:amd64".to_owned()))
    );
    let (raised, cleared) = l.file_alerts(&SoftwareIndex::default(), at);
    assert_eq!((raised, cleared), (0, 1));
    assert_eq!(
        j.incident(&number).unwrap().state,
        crate::incidents::IncidentState::Resolved
    );
}
