//! Host CIs and identification inside one [`Txn`]: resolves an agent's identity to a host
//! with the pure rules of `store::identify`, mints hosts, keeps the identity-key index, the
//! hostname index and each host CI's attributes (identity, agents, clone_of) up to date,
//! and stores clone records.

use std::time::{Duration, SystemTime};

use cmdb_proto::model::{AttrValue, Attrs, HostIdentity};

use super::apply::{Source, upsert_ci};
use super::codec::encode_attrs;
use super::keys;
use super::txn::Txn;
use crate::store::identify::{
    Claimant, CurrentHost, Decision, IdentityKey, Situation, best_match, decide, identity_keys,
    is_live,
};
use crate::store::{AgentRecord, CloneRecord, HOST_CLASS, HostId, StoreError, host_ci_id};

/// Agents listed on one host CI (reinstalls accumulate; the oldest drop off the list).
const MAX_HOST_AGENTS: usize = 64;
/// Longest hostname indexed for `cis(host=<hostname>)`.
const MAX_HOSTNAME: usize = 255;

fn attr_str(attrs: &Attrs, name: &str) -> Option<String> {
    attrs
        .get(name)
        .and_then(AttrValue::as_str)
        .map(str::to_owned)
}

fn attr_list(attrs: &Attrs, name: &str) -> Vec<String> {
    attrs
        .get(name)
        .and_then(AttrValue::as_list)
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn indexable_hostname(h: &str) -> bool {
    !h.is_empty() && h.len() <= MAX_HOSTNAME && !h.contains('\0')
}

/// Resolves and records the host of `agent_id` (see `Store::identify`).
pub(super) fn identify(
    txn: &mut Txn<'_>,
    agent_id: &str,
    instance_id: &str,
    identity: &HostIdentity,
    now: SystemTime,
    live_window: Duration,
) -> Result<HostId, StoreError> {
    let keys = identity_keys(identity);
    let matched = best_match(&keys, |k| lookup(txn, k))?;
    let mut agent = match txn.peek_agent(agent_id)? {
        Some(a) => a,
        None => AgentRecord::new(agent_id, instance_id, "", identity.clone(), now),
    };
    let current = match &agent.host_id {
        Some(h) => txn
            .peek_ci(h, HOST_CLASS, &host_ci_id(h))?
            .map(|rec| CurrentHost {
                host_id: h.clone(),
                clone_of: attr_str(&rec.attrs, "clone_of"),
            }),
        None => None,
    };
    let others = match &matched {
        Some((h, _)) => claimants(txn, h, now, live_window)?,
        None => Vec::new(),
    };
    let decision = decide(&Situation {
        agent_id: agent_id.to_owned(),
        instance_id: instance_id.to_owned(),
        matched,
        current,
        others,
    });
    let src = Source {
        agent_id,
        seq: 0,
        observed_at: now,
    };
    let (host, new_clone_of) = match decision {
        Decision::Join { host_id } => {
            index_keys(txn, &keys, &host_id, true)?;
            (host_id, None)
        }
        Decision::Mint => {
            let host_id = mint(txn)?;
            index_keys(txn, &keys, &host_id, true)?;
            (host_id, None)
        }
        Decision::StayClone { host_id } => {
            index_keys(txn, &keys, &host_id, false)?;
            (host_id, None)
        }
        Decision::Clone {
            of,
            mut live_agents,
            identity_key,
        } => {
            let host_id = mint(txn)?;
            live_agents.push(agent_id.to_owned());
            let record = CloneRecord {
                host_id: of.clone(),
                agents: live_agents,
                identity_key,
                detected_at: now,
                clone_host_id: host_id.clone(),
            };
            txn.raw.put_json(keys::clone(now, &host_id), &record)?;
            (host_id, Some(of))
        }
    };
    if let Some(old) = agent.host_id.clone()
        && old != host
    {
        update_host(txn, &old, None, HostAgents::Remove(agent_id), None, &src)?;
    }
    update_host(
        txn,
        &host,
        Some(identity),
        HostAgents::Add(agent_id),
        new_clone_of,
        &src,
    )?;
    agent.host_id = Some(host.clone());
    agent.instance_id = instance_id.to_owned();
    agent.identity = identity.clone();
    agent.hostname = identity.hostname.clone();
    txn.agents.insert(agent_id.to_owned(), agent);
    Ok(host)
}

fn lookup(txn: &Txn<'_>, key: &IdentityKey) -> Result<Option<HostId>, StoreError> {
    Ok(txn
        .get(&keys::identity(&key.to_string()))?
        .and_then(|v| String::from_utf8(v).ok()))
}

/// The agents listed on `host`, with their liveness (an agent that moved away is not one).
fn claimants(
    txn: &Txn<'_>,
    host: &str,
    now: SystemTime,
    window: Duration,
) -> Result<Vec<Claimant>, StoreError> {
    let Some(rec) = txn.peek_ci(host, HOST_CLASS, &host_ci_id(host))? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for id in attr_list(&rec.attrs, "agents") {
        if let Some(a) = txn.peek_agent(&id)?
            && a.host_id.as_deref() == Some(host)
        {
            out.push(Claimant {
                live: is_live(&a, now, window),
                agent_id: a.agent_id,
                instance_id: a.instance_id,
            });
        }
    }
    Ok(out)
}

/// Points identity keys at `host`: all of them (`overwrite`), or only those no host holds.
fn index_keys(
    txn: &mut Txn<'_>,
    keys_: &[IdentityKey],
    host: &str,
    overwrite: bool,
) -> Result<(), StoreError> {
    for k in keys_ {
        let key = keys::identity(&k.to_string());
        let current = txn.get(&key)?;
        if current.as_deref() == Some(host.as_bytes()) {
            continue;
        }
        if overwrite || current.is_none() {
            txn.raw.put(key, host.as_bytes().to_vec());
        }
    }
    Ok(())
}

/// A fresh random host id not in use.
fn mint(txn: &Txn<'_>) -> Result<HostId, StoreError> {
    for _ in 0..8 {
        let id = format!("host-{:016x}", rand::random::<u64>());
        if txn.peek_ci(&id, HOST_CLASS, &host_ci_id(&id))?.is_none() {
            return Ok(id);
        }
    }
    Err(StoreError::Backend(
        "could not mint an unused host id in 8 tries".into(),
    ))
}

enum HostAgents<'a> {
    Add(&'a str),
    Remove(&'a str),
}

/// Rewrites a host CI's attributes (a version only when they change) and its hostname index.
fn update_host(
    txn: &mut Txn<'_>,
    host: &str,
    identity: Option<&HostIdentity>,
    agents: HostAgents<'_>,
    new_clone_of: Option<HostId>,
    src: &Source<'_>,
) -> Result<(), StoreError> {
    let mut attrs = txn
        .peek_ci(host, HOST_CLASS, &host_ci_id(host))?
        .map(|r| r.attrs)
        .unwrap_or_default();
    let old_hostname = attr_str(&attrs, "hostname");
    if let Some(id) = identity {
        let mut set = |name: &str, v: &Option<String>| {
            attrs.insert(name.to_owned(), AttrValue::from(v.clone()));
        };
        set("hostname", &id.hostname);
        set("fqdn", &id.fqdn);
        set("machine_id", &id.machine_id);
        set("product_uuid", &id.product_uuid);
        set("serial_number", &id.serial_number);
        set("board_serial", &id.board_serial);
        set("cloud_instance_id", &id.cloud_instance_id);
        attrs.insert("macs".into(), AttrValue::from(id.macs.clone()));
    }
    let mut list = attr_list(&attrs, "agents");
    match agents {
        HostAgents::Add(a) => {
            if !list.iter().any(|x| x == a) {
                list.push(a.to_owned());
            }
            if list.len() > MAX_HOST_AGENTS {
                list.drain(..list.len() - MAX_HOST_AGENTS);
            }
        }
        HostAgents::Remove(a) => list.retain(|x| x != a),
    }
    attrs.insert("agents".into(), AttrValue::from(list));
    if let Some(of) = new_clone_of {
        attrs.insert("clone_of".into(), AttrValue::Str(of));
    } else {
        attrs.entry("clone_of".into()).or_insert(AttrValue::Null);
    }
    let new_hostname = attr_str(&attrs, "hostname");
    upsert_ci(
        txn,
        (host, HOST_CLASS, host),
        host_ci_id(host),
        encode_attrs(&attrs),
        src,
    )?;
    if old_hostname != new_hostname {
        if let Some(h) = old_hostname.filter(|h| indexable_hostname(h)) {
            txn.raw.delete(keys::by_hostname(&h, host));
        }
        if let Some(h) = new_hostname.filter(|h| indexable_hostname(h)) {
            txn.raw.put(keys::by_hostname(&h, host), Vec::new());
        }
    }
    Ok(())
}
