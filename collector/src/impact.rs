//! Impact analysis: from one CI, what is affected if it fails (downstream) and what it
//! depends on (upstream), up to N hops, over the agents' relations, the derived host links
//! ([`crate::host_links`]) and the implicit containment of CIs in their host.
//!
//! Every edge is read as "who is affected by whose failure":
//!
//! | edge (from → to)                         | failure of `to` affects `from` | failure of `from` affects `to` |
//! |------------------------------------------|:---:|:---:|
//! | `connects_to` process → connection       | yes | no  |
//! | `connects_to` connection → listening_port (derived, across hosts) | yes | no |
//! | `connects_to` host → host (derived)      | yes | no  |
//! | `mounted_on` filesystem → disk           | yes | no  |
//! | `member_of` user → group                 | yes | no  |
//! | any other kind                           | yes | no  |
//! | `runs` service → process                 | yes | yes |
//! | `listens_on` process → listening_port    | yes | yes |
//! | `contains` host → CI on it (implicit)    | no¹ | yes |
//!
//! ¹ except for `connection` CIs: an outbound connection is the host's use of a remote
//! endpoint, so its failure affects the host (host and connection are affected both ways).
//!
//! `runs` and `listens_on` bind a service, its processes and their listening ports into
//! one unit: any of them failing affects the others. Containment is not stored anywhere:
//! the agents' relations never name the host, so the walk adds an edge `host → ci`
//! (kind `contains`) for every present CI of the host.
//!
//! Downstream of X = every CI reachable from X by following "failure of this affects
//! that"; upstream = the reverse. So for a listening port P of host B: downstream are the
//! processes listening on it, the services running them, the connections of other hosts to
//! it and those hosts (and, further, what runs on them); upstream are host B and the
//! listening processes (a unit: they are both), the service, and what those depend on.
//!
//! Bounded: depth ≤ [`MAX_DEPTH`], at most [`MAX_NODES`] nodes over both directions and
//! [`MAX_CONTAINED`] CIs read per host; a walk that hits a bound says `truncated`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use cmdb_proto::model::class;
use serde::Serialize;

use crate::store::{CiFilter, CiState, HOST_CLASS, Store, StoreError, host_ci_id};

/// Hops walked when the request does not say.
pub const DEFAULT_DEPTH: u32 = 3;
/// Most hops a request may ask for.
pub const MAX_DEPTH: u32 = 6;
/// Most nodes in one answer (both directions together).
pub const MAX_NODES: usize = 5000;
/// Most CIs of one host read as its containment edges.
pub const MAX_CONTAINED: usize = 5000;
/// The kind of the implicit containment edges.
pub const CONTAINS: &str = "contains";

/// A CI as the walk sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub class: String,
    pub key: String,
    pub host_id: String,
    pub hostname: Option<String>,
}

/// An edge at one node: `from → to` of `kind`; `to_class` is the class of the `to` end
/// (it decides the containment flow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    pub kind: String,
    pub to_class: String,
}

/// What the walk reads.
pub trait ImpactGraph {
    /// The node `id`, if it exists.
    fn node(&self, id: &str) -> Result<Option<NodeInfo>, StoreError>;
    /// The present edges with `node` at either end, containment included. `truncated`
    /// is set when the graph left some out.
    fn edges(&self, node: &NodeInfo, truncated: &mut bool) -> Result<Vec<GraphEdge>, StoreError>;
}

/// (failure of `to` affects `from`, failure of `from` affects `to`).
pub fn flow(kind: &str, to_class: &str) -> (bool, bool) {
    match kind {
        "runs" | "listens_on" => (true, true),
        CONTAINS => (to_class == class::CONNECTION, true),
        _ => (true, false),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Downstream,
    Upstream,
}

/// One CI of an impact set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImpactNode {
    pub id: String,
    pub class: String,
    pub key: String,
    pub host_id: String,
    pub hostname: Option<String>,
    pub direction: Direction,
    /// Hops from the root (1 = adjacent).
    pub hops: u32,
    /// The kind of the edge it was reached through.
    pub via: String,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ImpactEdge {
    pub from: String,
    pub to: String,
    pub kind: String,
}

/// The answer of `GET /api/v1/cis/{id}/impact`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Impact {
    pub root: String,
    pub depth: u32,
    /// Downstream nodes, then upstream ones, each by hops then id. The root is not listed;
    /// a CI can be listed in both directions.
    pub nodes: Vec<ImpactNode>,
    /// The edge through which each node was first reached (one per node, deduplicated).
    pub edges: Vec<ImpactEdge>,
    pub truncated: bool,
}

/// Walks both directions from `root` up to `depth` hops (clamped to [`MAX_DEPTH`]), at most
/// `max_nodes` nodes. `None` when the root does not exist.
pub fn impact(
    graph: &dyn ImpactGraph,
    root: &str,
    depth: u32,
    max_nodes: usize,
) -> Result<Option<Impact>, StoreError> {
    let depth = depth.min(MAX_DEPTH);
    let Some(root_node) = graph.node(root)? else {
        return Ok(None);
    };
    let mut truncated = false;
    let mut nodes = Vec::new();
    let mut edges = std::collections::BTreeSet::new();
    // Edges of a node, read once for both directions.
    let mut cache: HashMap<String, (NodeInfo, Vec<GraphEdge>)> = HashMap::new();
    for direction in [Direction::Downstream, Direction::Upstream] {
        let mut seen: HashSet<String> = HashSet::from([root.to_owned()]);
        let mut queue: VecDeque<(NodeInfo, u32)> = VecDeque::from([(root_node.clone(), 0)]);
        'walk: while let Some((node, hops)) = queue.pop_front() {
            if hops >= depth {
                continue;
            }
            if !cache.contains_key(&node.id) {
                let e = graph.edges(&node, &mut truncated)?;
                cache.insert(node.id.clone(), (node.clone(), e));
            }
            let mut next: BTreeMap<String, GraphEdge> = BTreeMap::new();
            if let Some((_, node_edges)) = cache.get(&node.id) {
                for e in node_edges {
                    let (to_hits_from, from_hits_to) = flow(&e.kind, &e.to_class);
                    let (down, up) = if e.from == node.id {
                        (from_hits_to.then_some(&e.to), to_hits_from.then_some(&e.to))
                    } else if e.to == node.id {
                        (
                            to_hits_from.then_some(&e.from),
                            from_hits_to.then_some(&e.from),
                        )
                    } else {
                        (None, None)
                    };
                    let other = match direction {
                        Direction::Downstream => down,
                        Direction::Upstream => up,
                    };
                    if let Some(o) = other
                        && !seen.contains(o)
                    {
                        next.entry(o.clone()).or_insert_with(|| e.clone());
                    }
                }
            }
            for (other, e) in next {
                if seen.contains(&other) {
                    continue;
                }
                if nodes.len() >= max_nodes {
                    truncated = true;
                    break 'walk;
                }
                let info = match cache.get(&other) {
                    Some((n, _)) => Some(n.clone()),
                    None => graph.node(&other)?,
                };
                let Some(info) = info else { continue };
                seen.insert(other.clone());
                nodes.push(ImpactNode {
                    id: info.id.clone(),
                    class: info.class.clone(),
                    key: info.key.clone(),
                    host_id: info.host_id.clone(),
                    hostname: info.hostname.clone(),
                    direction,
                    hops: hops + 1,
                    via: e.kind.clone(),
                });
                edges.insert(ImpactEdge {
                    from: e.from,
                    to: e.to,
                    kind: e.kind,
                });
                queue.push_back((info, hops + 1));
            }
        }
    }
    nodes.sort_by(|a, b| (a.direction, a.hops, &a.id).cmp(&(b.direction, b.hops, &b.id)));
    Ok(Some(Impact {
        root: root.to_owned(),
        depth,
        nodes,
        edges: edges.into_iter().collect(),
        truncated,
    }))
}

/// The store as an impact graph: agents' relations and derived host links (present ones),
/// plus containment.
pub struct StoreGraph<'a> {
    store: &'a dyn Store,
    hostnames: std::cell::RefCell<HashMap<String, Option<String>>>,
}

impl<'a> StoreGraph<'a> {
    pub fn new(store: &'a dyn Store) -> Self {
        Self {
            store,
            hostnames: std::cell::RefCell::new(HashMap::new()),
        }
    }

    fn hostname(&self, host_id: &str) -> Result<Option<String>, StoreError> {
        if let Some(h) = self.hostnames.borrow().get(host_id) {
            return Ok(h.clone());
        }
        let name = self.store.ci(&host_ci_id(host_id))?.and_then(|c| {
            c.attrs
                .get("hostname")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        });
        self.hostnames
            .borrow_mut()
            .insert(host_id.to_owned(), name.clone());
        Ok(name)
    }
}

/// The class part of a `<class>/<key>` reference.
fn class_of_ref(r: &str) -> &str {
    r.split_once('/').map_or("", |(c, _)| c)
}

impl ImpactGraph for StoreGraph<'_> {
    fn node(&self, id: &str) -> Result<Option<NodeInfo>, StoreError> {
        let Some(ci) = self.store.ci(id)? else {
            return Ok(None);
        };
        let hostname = self.hostname(&ci.host_id)?;
        Ok(Some(NodeInfo {
            id: ci.id,
            class: ci.class,
            key: ci.key,
            host_id: ci.host_id,
            hostname,
        }))
    }

    fn edges(&self, node: &NodeInfo, truncated: &mut bool) -> Result<Vec<GraphEdge>, StoreError> {
        let mut out: Vec<GraphEdge> = crate::host_links::relations_of(self.store, &node.id)?
            .into_iter()
            .filter(|r| r.present)
            .map(|r| GraphEdge {
                to_class: class_of_ref(&r.to_ref).to_owned(),
                from: r.from,
                to: r.to,
                kind: r.kind,
            })
            .collect();
        if node.class == HOST_CLASS {
            let cis = self.store.cis(&CiFilter {
                host: Some(node.host_id.clone()),
                limit: MAX_CONTAINED + 1,
                ..CiFilter::default()
            })?;
            if cis.len() > MAX_CONTAINED {
                *truncated = true;
            }
            for ci in cis.into_iter().take(MAX_CONTAINED) {
                if ci.id == node.id || ci.state != CiState::Present || ci.host_id != node.host_id {
                    continue;
                }
                out.push(GraphEdge {
                    from: node.id.clone(),
                    to: ci.id,
                    kind: CONTAINS.to_owned(),
                    to_class: ci.class,
                });
            }
        } else {
            out.push(GraphEdge {
                from: host_ci_id(&node.host_id),
                to: node.id.clone(),
                kind: CONTAINS.to_owned(),
                to_class: node.class.clone(),
            });
        }
        Ok(out)
    }
}

/// A graph held in memory (tests, benchmarks): nodes and explicit edges; containment is
/// added like [`StoreGraph`] does (host nodes contain the nodes with their host id).
#[derive(Default)]
pub struct MemGraph {
    pub nodes: HashMap<String, NodeInfo>,
    by_host: HashMap<String, Vec<String>>,
    edges: HashMap<String, Vec<GraphEdge>>,
}

impl MemGraph {
    pub fn add_node(&mut self, n: NodeInfo) {
        if n.class != HOST_CLASS {
            self.by_host
                .entry(n.host_id.clone())
                .or_default()
                .push(n.id.clone());
        }
        self.nodes.insert(n.id.clone(), n);
    }

    pub fn add_edge(&mut self, from: &str, to: &str, kind: &str) {
        let to_class = self
            .nodes
            .get(to)
            .map(|n| n.class.clone())
            .unwrap_or_default();
        let e = GraphEdge {
            from: from.to_owned(),
            to: to.to_owned(),
            kind: kind.to_owned(),
            to_class,
        };
        self.edges
            .entry(from.to_owned())
            .or_default()
            .push(e.clone());
        if from != to {
            self.edges.entry(to.to_owned()).or_default().push(e);
        }
    }
}

impl ImpactGraph for MemGraph {
    fn node(&self, id: &str) -> Result<Option<NodeInfo>, StoreError> {
        Ok(self.nodes.get(id).cloned())
    }

    fn edges(&self, node: &NodeInfo, truncated: &mut bool) -> Result<Vec<GraphEdge>, StoreError> {
        let mut out = self.edges.get(&node.id).cloned().unwrap_or_default();
        if node.class == HOST_CLASS {
            let on = self
                .by_host
                .get(&node.host_id)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if on.len() > MAX_CONTAINED {
                *truncated = true;
            }
            for id in on.iter().take(MAX_CONTAINED) {
                if let Some(n) = self.nodes.get(id) {
                    out.push(GraphEdge {
                        from: node.id.clone(),
                        to: id.clone(),
                        kind: CONTAINS.to_owned(),
                        to_class: n.class.clone(),
                    });
                }
            }
        } else {
            out.push(GraphEdge {
                from: host_ci_id(&node.host_id),
                to: node.id.clone(),
                kind: CONTAINS.to_owned(),
                to_class: node.class.clone(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
