//! The address index and the derived relations, pure and through a real sled store.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cmdb_proto::convert::{attrs_to_proto, timestamp_from_system};
use cmdb_proto::model::{AttrValue, Attrs, HostIdentity};
use cmdb_proto::v1;
use proptest::prelude::*;

use super::*;
use crate::store::ci_id;
use crate::store::sled::SledStore;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// (from, to, present) of the Puts.
fn puts(w: &[LinkWrite]) -> BTreeSet<(String, String, bool)> {
    w.iter()
        .filter_map(|w| match w {
            LinkWrite::Put(r) => Some((r.from.clone(), r.to.clone(), r.present)),
            LinkWrite::Delete(_) => None,
        })
        .collect()
}

fn h(host: &str) -> String {
    host_ci_id(host)
}

/// Host A (10.0.0.1), host B (10.0.0.2) listening on *:5432 and 10.0.0.2:80.
fn two_hosts() -> LinkIndex {
    let mut ix = LinkIndex::default();
    ix.set_interface("if-a", "A", Some(vec![ip("10.0.0.1")]));
    ix.set_interface("if-b", "B", Some(vec![ip("10.0.0.2"), ip("fd00::2")]));
    ix.set_port("p-pg", "B", "tcp:0.0.0.0:5432", Some((ip("0.0.0.0"), 5432)));
    ix.set_port("p-80-any", "B", "tcp:0.0.0.0:80", Some((ip("0.0.0.0"), 80)));
    ix.set_port("p-80", "B", "tcp:10.0.0.2:80", Some((ip("10.0.0.2"), 80)));
    ix.set_port("p-81", "B", "tcp:10.9.9.9:81", Some((ip("10.9.9.9"), 81)));
    assert!(ix.settle().is_empty());
    ix
}

#[test]
fn a_connection_to_an_owned_address_links_the_hosts_and_the_port() {
    let mut ix = two_hosts();
    ix.set_connection("c1", "A", "tcp:10.0.0.2:5432", Some((ip("10.0.0.2"), 5432)));
    let w = ix.settle();
    assert_eq!(
        puts(&w),
        BTreeSet::from([
            (h("A"), h("B"), true),
            ("c1".to_owned(), "p-pg".to_owned(), true),
        ])
    );
    let host_link = w
        .iter()
        .find_map(|w| match w {
            LinkWrite::Put(r) if r.from == h("A") => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(host_link.kind, "connects_to");
    assert_eq!(host_link.host_id, "A");
    assert_eq!(host_link.from_ref, "host/A");
    assert_eq!(host_link.to_ref, "host/B");
    // Nothing changed: nothing to write.
    assert!(ix.settle().is_empty());

    // A listener bound to the very address wins over the wildcard one.
    ix.set_connection("c2", "A", "tcp:10.0.0.2:80", Some((ip("10.0.0.2"), 80)));
    assert_eq!(
        puts(&ix.settle()),
        BTreeSet::from([("c2".to_owned(), "p-80".to_owned(), true)])
    );
    // A port bound elsewhere does not match; the host link is enough (already present).
    ix.set_connection("c3", "A", "tcp:10.0.0.2:81", Some((ip("10.0.0.2"), 81)));
    assert!(ix.settle().is_empty());
    // IPv6 addresses resolve too.
    ix.set_connection("c4", "A", "tcp:[fd00::2]:5432", Some((ip("fd00::2"), 5432)));
    assert_eq!(
        puts(&ix.settle()),
        BTreeSet::from([("c4".to_owned(), "p-pg".to_owned(), true)])
    );
}

#[test]
fn links_go_absent_with_their_last_connection() {
    let mut ix = two_hosts();
    ix.set_connection("c1", "A", "k1", Some((ip("10.0.0.2"), 5432)));
    ix.set_connection("c2", "A", "k2", Some((ip("10.0.0.2"), 80)));
    assert_eq!(ix.settle().len(), 3);
    assert_eq!(ix.present_links(), 3);

    ix.set_connection("c1", "A", "k1", None);
    assert_eq!(
        puts(&ix.settle()),
        BTreeSet::from([("c1".to_owned(), "p-pg".to_owned(), false)]),
        "the host link stays: c2 still supports it"
    );
    ix.set_connection("c2", "A", "k2", None);
    assert_eq!(
        puts(&ix.settle()),
        BTreeSet::from([
            (h("A"), h("B"), false),
            ("c2".to_owned(), "p-80".to_owned(), false),
        ])
    );
    assert_eq!(ix.present_links(), 0);
    assert_eq!(ix.link_count(), 3, "absent links are kept, not deleted");

    // The connection comes back: the same relations turn present again.
    ix.set_connection("c1", "A", "k1", Some((ip("10.0.0.2"), 5432)));
    assert_eq!(
        puts(&ix.settle()),
        BTreeSet::from([
            (h("A"), h("B"), true),
            ("c1".to_owned(), "p-pg".to_owned(), true),
        ])
    );
}

#[test]
fn the_port_closing_or_the_address_moving_updates_the_links() {
    let mut ix = two_hosts();
    ix.set_connection("c1", "A", "k1", Some((ip("10.0.0.2"), 5432)));
    ix.settle();
    ix.set_port("p-pg", "B", "tcp:0.0.0.0:5432", None);
    assert_eq!(
        puts(&ix.settle()),
        BTreeSet::from([("c1".to_owned(), "p-pg".to_owned(), false)])
    );
    // B loses the address, C gains it: the host link moves to C.
    ix.set_interface("if-b", "B", Some(vec![]));
    ix.set_interface("if-c", "C", Some(vec![ip("10.0.0.2")]));
    assert_eq!(
        puts(&ix.settle()),
        BTreeSet::from([(h("A"), h("B"), false), (h("A"), h("C"), true)])
    );
}

#[test]
fn late_enrolment_ambiguous_loopback_and_self_connections() {
    let mut ix = LinkIndex::default();
    ix.set_interface("if-a", "A", Some(vec![ip("10.0.0.1")]));
    // The connection comes before its target host is known: no link yet.
    ix.set_connection("c1", "A", "k1", Some((ip("10.0.0.2"), 22)));
    assert!(ix.settle().is_empty());
    ix.set_interface("if-b", "B", Some(vec![ip("10.0.0.2")]));
    assert_eq!(puts(&ix.settle()), BTreeSet::from([(h("A"), h("B"), true)]));
    // A second owner of the address makes it ambiguous: the link goes.
    ix.set_interface("if-x", "X", Some(vec![ip("10.0.0.2")]));
    assert_eq!(ix.owner_of(&ip("10.0.0.2")), None);
    assert_eq!(
        puts(&ix.settle()),
        BTreeSet::from([(h("A"), h("B"), false)])
    );
    // A connection to the host's own address links nothing.
    ix.set_connection("c2", "A", "k2", Some((ip("10.0.0.1"), 22)));
    assert!(ix.settle().is_empty());

    // Attribute parsing: loopback, link-local, inbound and UDP are left out.
    let attrs = |pairs: &[(&str, AttrValue)]| -> Attrs {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let iface = attrs(&[
        (
            "ipv4",
            AttrValue::from(vec!["127.0.0.1/8".to_owned(), "192.168.1.5/24".to_owned()]),
        ),
        (
            "ipv6",
            AttrValue::from(vec!["fe80::1/64".to_owned(), "2001:db8::5/64".to_owned()]),
        ),
    ]);
    assert_eq!(
        interface_addresses(&iface),
        vec![ip("192.168.1.5"), ip("2001:db8::5")]
    );
    let conn = |dir: &str, addr: &str| {
        attrs(&[
            ("protocol", AttrValue::from("tcp")),
            ("direction", AttrValue::from(dir)),
            ("remote_address", AttrValue::from(addr)),
            ("remote_port", AttrValue::Int(5432)),
        ])
    };
    assert_eq!(
        connection_endpoint(&conn("outbound", "10.0.0.2")),
        Some((ip("10.0.0.2"), 5432))
    );
    assert_eq!(
        connection_endpoint(&conn("outbound", "::ffff:10.0.0.2")),
        Some((ip("10.0.0.2"), 5432))
    );
    assert_eq!(connection_endpoint(&conn("inbound", "10.0.0.2")), None);
    assert_eq!(connection_endpoint(&conn("outbound", "127.0.0.1")), None);
    let udp = attrs(&[
        ("protocol", AttrValue::from("udp")),
        ("address", AttrValue::from("0.0.0.0")),
        ("port", AttrValue::Int(53)),
    ]);
    assert_eq!(listening_endpoint(&udp), None);
}

#[test]
fn links_per_host_are_capped_evicting_absent_ones_first() {
    let mut ix = LinkIndex::default();
    ix.set_interface("if-a", "A", Some(vec![ip("10.0.0.1")]));
    // MAX_LINKS_PER_HOST + 1 target hosts, one connection each.
    let n = MAX_LINKS_PER_HOST + 1;
    for i in 0..n {
        let addr = IpAddr::from([10, 1, (i / 256) as u8, (i % 256) as u8]);
        ix.set_interface(&format!("if-{i}"), &format!("T{i}"), Some(vec![addr]));
        ix.set_connection(&format!("c{i}"), "A", "k", Some((addr, 9)));
    }
    ix.settle();
    assert_eq!(ix.link_count(), MAX_LINKS_PER_HOST);
    assert_eq!(ix.dropped_links, 1);
    // One connection goes (its link turns absent), another comes: the absent one makes room.
    ix.set_connection("c0", "A", "k", None);
    ix.settle();
    let addr = IpAddr::from([10, 2, 0, 1]);
    ix.set_interface("if-new", "NEW", Some(vec![addr]));
    ix.set_connection("c-new", "A", "k", Some((addr, 9)));
    let w = ix.settle();
    assert!(
        w.iter()
            .any(|w| matches!(w, LinkWrite::Delete(k) if k.to == h("T0"))),
        "{w:?}"
    );
    assert!(puts(&w).contains(&(h("A"), h("NEW"), true)));
    assert_eq!(ix.link_count(), MAX_LINKS_PER_HOST);
}

proptest! {
    #[test]
    fn attribute_parsers_never_panic(a in ".{0,60}", p in any::<i64>()) {
        let attrs: Attrs = [
            ("protocol".to_owned(), AttrValue::from("tcp")),
            ("remote_address".to_owned(), AttrValue::from(a.as_str())),
            ("address".to_owned(), AttrValue::from(a.as_str())),
            ("remote_port".to_owned(), AttrValue::Int(p)),
            ("port".to_owned(), AttrValue::Int(p)),
            ("ipv4".to_owned(), AttrValue::from(vec![a.clone()])),
        ]
        .into_iter()
        .collect();
        let _ = connection_endpoint(&attrs);
        let _ = listening_endpoint(&attrs);
        prop_assert!(interface_addresses(&attrs).len() <= 1);
    }
}

// === through a real store ===

fn identity(name: &str) -> HostIdentity {
    HostIdentity {
        hostname: Some(name.into()),
        machine_id: Some(format!("mid-{name}")),
        product_uuid: Some(format!("uuid-{name}")),
        ..HostIdentity::default()
    }
}

fn item(class_name: &str, key: &str, attrs: &[(&str, AttrValue)]) -> v1::Item {
    let a: Attrs = attrs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    v1::Item {
        class: class_name.into(),
        key: key.into(),
        attrs: attrs_to_proto(&a),
    }
}

pub(crate) fn snapshot(seq: u64, items: Vec<v1::Item>, relations: Vec<v1::Relation>) -> v1::Event {
    let mut classes: Vec<String> = items.iter().map(|i| i.class.clone()).collect();
    classes.extend(
        [
            class::CONNECTION,
            class::LISTENING_PORT,
            class::NETWORK_INTERFACE,
        ]
        .map(str::to_owned),
    );
    classes.sort();
    classes.dedup();
    let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seq);
    v1::Event {
        seq,
        observed_at: Some(timestamp_from_system(at)),
        kind: Some(v1::event::Kind::Snapshot(v1::Snapshot {
            inventory: Some(v1::Inventory {
                schema: "cmdb.inventory/v1".into(),
                collected_at: Some(timestamp_from_system(at)),
                agent: Some(v1::AgentInfo {
                    version: "0.1.0".into(),
                    instance_id: "i".into(),
                }),
                host: Some(v1::HostIdentity::default()),
                collectors: vec![v1::CollectorStatus {
                    name: "raw".into(),
                    state: v1::CollectorState::Ok as i32,
                    classes,
                    ..Default::default()
                }],
                items,
                relations,
            }),
            content_hash: vec![seq as u8; 4],
        })),
    }
}

pub(crate) fn iface(name: &str, addr: &str) -> v1::Item {
    item(
        class::NETWORK_INTERFACE,
        name,
        &[("ipv4", AttrValue::from(vec![format!("{addr}/24")]))],
    )
}

pub(crate) fn listener(addr: &str, port: i64) -> v1::Item {
    item(
        class::LISTENING_PORT,
        &format!("tcp:{addr}:{port}"),
        &[
            ("protocol", AttrValue::from("tcp")),
            ("address", AttrValue::from(addr)),
            ("port", AttrValue::Int(port)),
        ],
    )
}

pub(crate) fn outbound(addr: &str, port: i64) -> v1::Item {
    item(
        class::CONNECTION,
        &format!("tcp:{addr}:{port}"),
        &[
            ("protocol", AttrValue::from("tcp")),
            ("direction", AttrValue::from("outbound")),
            ("remote_address", AttrValue::from(addr)),
            ("remote_port", AttrValue::Int(port)),
        ],
    )
}

fn drain(links: &HostLinks) {
    while links.step().unwrap() > 0 {}
}

#[test]
fn the_task_follows_the_feed_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 8 << 20).unwrap());
    let now = SystemTime::now();
    let a = store
        .identify("agt-a", "ia", &identity("app-1"), now)
        .unwrap();
    let b = store
        .identify("agt-b", "ib", &identity("db-1"), now)
        .unwrap();
    store
        .apply(
            "agt-b",
            &[snapshot(
                1,
                vec![iface("eth0", "10.0.0.2"), listener("0.0.0.0", 5432)],
                vec![],
            )],
        )
        .unwrap();
    store
        .apply(
            "agt-a",
            &[snapshot(
                1,
                vec![iface("eth0", "10.0.0.1"), outbound("10.0.0.2", 5432)],
                vec![],
            )],
        )
        .unwrap();
    let links = HostLinks::new(Arc::clone(&store));
    drain(&links);

    let conn = ci_id(&a, class::CONNECTION, "tcp:10.0.0.2:5432");
    let port = ci_id(&b, class::LISTENING_PORT, "tcp:0.0.0.0:5432");
    let of_a: BTreeSet<_> = derived_relations_of(store.as_ref(), &host_ci_id(&a))
        .unwrap()
        .into_iter()
        .map(|r| (r.from, r.to, r.present))
        .collect();
    assert_eq!(
        of_a,
        BTreeSet::from([(host_ci_id(&a), host_ci_id(&b), true)])
    );
    let of_port: Vec<_> = relations_of(store.as_ref(), &port).unwrap();
    assert_eq!(of_port.len(), 1, "{of_port:?}");
    assert_eq!((&of_port[0].from, &of_port[0].to), (&conn, &port));
    assert_eq!(of_port[0].to_ref, "listening_port/tcp:0.0.0.0:5432");

    // The connection goes: both relations turn absent.
    store
        .apply(
            "agt-a",
            &[snapshot(2, vec![iface("eth0", "10.0.0.1")], vec![])],
        )
        .unwrap();
    drain(&links);
    let all: Vec<_> = derived_relations_of(store.as_ref(), &host_ci_id(&b)).unwrap();
    assert_eq!(all.len(), 1);
    assert!(!all[0].present);
    assert!(!relations_of(store.as_ref(), &port).unwrap()[0].present);

    // A new task (a restart) resumes from the persisted cursor and agrees.
    store
        .apply(
            "agt-a",
            &[snapshot(
                3,
                vec![iface("eth0", "10.0.0.1"), outbound("10.0.0.2", 5432)],
                vec![],
            )],
        )
        .unwrap();
    let again = HostLinks::new(Arc::clone(&store));
    drain(&again);
    assert_eq!(again.counts(), (2, 2));
    assert!(
        derived_relations_of(store.as_ref(), &host_ci_id(&a)).unwrap()[0].present,
        "present again after the restart"
    );
}
