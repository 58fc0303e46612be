//! The walk over a planted graph with known impact sets, and over a real store.

use std::collections::BTreeSet;

use super::*;

fn node(id: &str, class_name: &str, host: &str) -> NodeInfo {
    NodeInfo {
        id: id.to_owned(),
        class: class_name.to_owned(),
        key: format!("{id}-key"),
        host_id: host.to_owned(),
        hostname: Some(format!("{host}.example")),
    }
}

fn hid(host: &str) -> String {
    host_ci_id(host)
}

/// Host B runs service S (process X listening on port P) and has filesystem F on disk D.
/// Host A runs service SA (process Y, connection C to P) and has a filesystem FA.
/// Derived: C connects_to P, host A connects_to host B.
fn planted() -> MemGraph {
    let mut g = MemGraph::default();
    for host in ["A", "B"] {
        g.add_node(node(&hid(host), HOST_CLASS, host));
    }
    for (id, c, host) in [
        ("S", "service", "B"),
        ("X", "process", "B"),
        ("P", "listening_port", "B"),
        ("F", "filesystem", "B"),
        ("D", "disk", "B"),
        ("SA", "service", "A"),
        ("Y", "process", "A"),
        ("C", "connection", "A"),
        ("FA", "filesystem", "A"),
    ] {
        g.add_node(node(id, c, host));
    }
    g.add_edge("S", "X", "runs");
    g.add_edge("X", "P", "listens_on");
    g.add_edge("F", "D", "mounted_on");
    g.add_edge("SA", "Y", "runs");
    g.add_edge("Y", "C", "connects_to");
    g.add_edge("C", "P", "connects_to");
    g.add_edge(&hid("A"), &hid("B"), "connects_to");
    g
}

fn set(i: &Impact, d: Direction) -> BTreeSet<(String, u32, String)> {
    i.nodes
        .iter()
        .filter(|n| n.direction == d)
        .map(|n| (n.id.clone(), n.hops, n.via.clone()))
        .collect()
}

fn s(items: &[(&str, u32, &str)]) -> BTreeSet<(String, u32, String)> {
    items
        .iter()
        .map(|(id, h, v)| ((*id).to_owned(), *h, (*v).to_owned()))
        .collect()
}

#[test]
fn the_three_hop_impact_of_a_listening_port_is_exactly_known() {
    let g = planted();
    let i = impact(&g, "P", 3, MAX_NODES).unwrap().unwrap();
    assert_eq!(i.root, "P");
    assert_eq!(i.depth, 3);
    assert!(!i.truncated);
    let a = hid("A");
    let b = hid("B");
    assert_eq!(
        set(&i, Direction::Downstream),
        s(&[
            ("X", 1, "listens_on"),
            ("C", 1, "connects_to"),
            ("S", 2, "runs"),
            ("Y", 2, "connects_to"),
            (&a, 2, "contains"),
            ("SA", 3, "runs"),
            ("FA", 3, "contains"),
        ])
    );
    assert_eq!(
        set(&i, Direction::Upstream),
        s(&[
            ("X", 1, "listens_on"),
            (&b, 1, "contains"),
            ("S", 2, "runs")
        ])
    );
    // Host A carries its hostname; every node has one edge that reached it.
    let host_a = i.nodes.iter().find(|n| n.id == a).unwrap();
    assert_eq!(host_a.hostname.as_deref(), Some("A.example"));
    assert_eq!(host_a.class, HOST_CLASS);
    assert!(i.edges.contains(&ImpactEdge {
        from: a.clone(),
        to: "C".into(),
        kind: "contains".into()
    }));
    assert!(i.edges.contains(&ImpactEdge {
        from: "C".into(),
        to: "P".into(),
        kind: "connects_to".into()
    }));
    // Nodes come downstream first, by hops.
    assert_eq!(i.nodes[0].direction, Direction::Downstream);
    assert_eq!(i.nodes[0].hops, 1);
}

#[test]
fn the_impact_of_a_host_and_of_a_disk() {
    let g = planted();
    let b = hid("B");
    let a = hid("A");
    let i = impact(&g, &b, 2, MAX_NODES).unwrap().unwrap();
    assert_eq!(
        set(&i, Direction::Downstream),
        s(&[
            ("S", 1, "contains"),
            ("X", 1, "contains"),
            ("P", 1, "contains"),
            ("F", 1, "contains"),
            ("D", 1, "contains"),
            (&a, 1, "connects_to"),
            ("C", 2, "connects_to"),
            ("FA", 2, "contains"),
            ("SA", 2, "contains"),
            ("Y", 2, "contains"),
        ])
    );
    assert_eq!(set(&i, Direction::Upstream), s(&[]));
    // Host A depends on B (derived link) and on what its connection reaches.
    let i = impact(&g, &a, 3, MAX_NODES).unwrap().unwrap();
    assert_eq!(
        set(&i, Direction::Upstream),
        s(&[
            (&b, 1, "connects_to"),
            ("C", 1, "contains"),
            ("P", 2, "connects_to"),
            ("X", 3, "listens_on"),
        ])
    );
    // A disk: the filesystem on it is downstream, its host upstream.
    let i = impact(&g, "D", 3, MAX_NODES).unwrap().unwrap();
    assert_eq!(set(&i, Direction::Downstream), s(&[("F", 1, "mounted_on")]));
    assert_eq!(set(&i, Direction::Upstream), s(&[(&b, 1, "contains")]));
}

#[test]
fn depth_limits_the_walk() {
    let g = planted();
    let one = impact(&g, "P", 1, MAX_NODES).unwrap().unwrap();
    assert_eq!(
        set(&one, Direction::Downstream),
        s(&[("X", 1, "listens_on"), ("C", 1, "connects_to")])
    );
    let two = impact(&g, "P", 2, MAX_NODES).unwrap().unwrap();
    assert_eq!(
        set(&two, Direction::Downstream)
            .into_iter()
            .map(|(id, _, _)| id)
            .collect::<BTreeSet<_>>(),
        ["X", "C", "S", "Y"]
            .map(str::to_owned)
            .into_iter()
            .chain([hid("A")])
            .collect()
    );
    assert!(two.nodes.iter().all(|n| n.hops <= 2));
    // Asked for more than the maximum: clamped.
    let deep = impact(&g, "P", 99, MAX_NODES).unwrap().unwrap();
    assert_eq!(deep.depth, MAX_DEPTH);
    // An unknown root is None.
    assert!(impact(&g, "nope", 3, MAX_NODES).unwrap().is_none());
}

#[test]
fn cycles_are_walked_once_at_their_shortest_distance() {
    let mut g = MemGraph::default();
    g.add_node(node(&hid("H"), HOST_CLASS, "H"));
    for id in ["a", "b", "c", "d"] {
        g.add_node(node(id, "thing", "H"));
    }
    // a → b → c → a (each depends on the next), c → d, and a self loop on d.
    g.add_edge("a", "b", "depends");
    g.add_edge("b", "c", "depends");
    g.add_edge("c", "a", "depends");
    g.add_edge("c", "d", "depends");
    g.add_edge("d", "d", "depends");
    // Upstream of a: what a depends on.
    let i = impact(&g, "a", 6, MAX_NODES).unwrap().unwrap();
    assert_eq!(
        set(&i, Direction::Upstream),
        s(&[
            ("b", 1, "depends"),
            (&hid("H"), 1, "contains"),
            ("c", 2, "depends"),
            ("d", 3, "depends"),
        ])
    );
    // Downstream of a: what depends on it (c directly, b through c).
    assert_eq!(
        set(&i, Direction::Downstream),
        s(&[("c", 1, "depends"), ("b", 2, "depends")])
    );
    let ids: Vec<_> = i.nodes.iter().map(|n| (&n.id, n.direction)).collect();
    let unique: BTreeSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "each node once per direction");
}

#[test]
fn the_node_cap_truncates() {
    let g = planted();
    let i = impact(&g, "P", 3, 4).unwrap().unwrap();
    assert!(i.truncated);
    assert_eq!(i.nodes.len(), 4);
    let full = impact(&g, "P", 3, 10).unwrap().unwrap();
    assert!(!full.truncated);
    assert_eq!(full.nodes.len(), 10);
}

#[test]
fn flows_by_kind() {
    assert_eq!(flow("connects_to", "listening_port"), (true, false));
    assert_eq!(flow("runs", "process"), (true, true));
    assert_eq!(flow("listens_on", "listening_port"), (true, true));
    assert_eq!(flow(CONTAINS, "process"), (false, true));
    assert_eq!(flow(CONTAINS, "connection"), (true, true));
    assert_eq!(flow("member_of", "group"), (true, false));
}

/// The same shape through a real store: two agents' inventories, the host-link task, and
/// the walk over the store.
#[test]
fn the_store_graph_includes_derived_links_and_containment() {
    use crate::host_links::tests::{iface, listener, outbound, snapshot};
    use crate::store::ci_id;
    use crate::store::sled::SledStore;
    use cmdb_proto::model::HostIdentity;
    use cmdb_proto::v1;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 8 << 20).unwrap());
    let ident = |name: &str| HostIdentity {
        hostname: Some(name.into()),
        machine_id: Some(format!("mid-{name}")),
        product_uuid: Some(format!("uuid-{name}")),
        ..HostIdentity::default()
    };
    let now = std::time::SystemTime::now();
    let a = store.identify("agt-a", "ia", &ident("app-1"), now).unwrap();
    let b = store.identify("agt-b", "ib", &ident("db-1"), now).unwrap();
    let item = |c: &str, k: &str| v1::Item {
        class: c.into(),
        key: k.into(),
        attrs: Default::default(),
    };
    let rel = |from: &str, to: &str, kind: &str| v1::Relation {
        from: from.into(),
        to: to.into(),
        kind: kind.into(),
    };
    store
        .apply(
            "agt-b",
            &[snapshot(
                1,
                vec![
                    iface("eth0", "10.0.0.2"),
                    listener("0.0.0.0", 5432),
                    item("process", "postgres"),
                    item("service", "postgresql.service"),
                ],
                vec![
                    rel("service/postgresql.service", "process/postgres", "runs"),
                    rel(
                        "process/postgres",
                        "listening_port/tcp:0.0.0.0:5432",
                        "listens_on",
                    ),
                ],
            )],
        )
        .unwrap();
    store
        .apply(
            "agt-a",
            &[snapshot(
                1,
                vec![
                    iface("eth0", "10.0.0.1"),
                    outbound("10.0.0.2", 5432),
                    item("process", "app"),
                ],
                vec![rel(
                    "process/app",
                    "connection/tcp:10.0.0.2:5432",
                    "connects_to",
                )],
            )],
        )
        .unwrap();
    let links = crate::host_links::HostLinks::new(Arc::clone(&store));
    while links.step().unwrap() > 0 {}

    let port = ci_id(&b, "listening_port", "tcp:0.0.0.0:5432");
    let i = impact(&StoreGraph::new(store.as_ref()), &port, 3, MAX_NODES)
        .unwrap()
        .unwrap();
    let down: BTreeSet<(String, u32)> = i
        .nodes
        .iter()
        .filter(|n| n.direction == Direction::Downstream)
        .map(|n| (format!("{}/{}", n.class, n.key), n.hops))
        .collect();
    let want: BTreeSet<(String, u32)> = [
        ("process/postgres".to_owned(), 1),
        ("connection/tcp:10.0.0.2:5432".to_owned(), 1),
        ("service/postgresql.service".to_owned(), 2),
        ("process/app".to_owned(), 2),
        (format!("host/{a}"), 2),
        ("network_interface/eth0".to_owned(), 3),
    ]
    .into_iter()
    .collect();
    assert_eq!(down, want, "{i:?}");
    let host_a = i.nodes.iter().find(|n| n.class == HOST_CLASS).unwrap();
    assert_eq!(host_a.hostname.as_deref(), Some("app-1"));
}
