//! Host identification as pure functions, independent of any storage backend.
//!
//! [`identity_keys`] turns a reported [`HostIdentity`] into ranked keys — product_uuid, then
//! serial_number, then machine_id, then the MAC set, then fqdn — normalised (trimmed,
//! lower-cased, bounded in length) and with placeholder values dropped
//! ([`cmdb_proto::identity::is_placeholder`]): a placeholder shared by a thousand machines
//! must never merge them into one host. The hostname is never a key.
//!
//! [`decide`] says what to do with an identifying agent given the host its best key matched
//! and the other agents already on that host: join it (first contact, reconnect, or a
//! reinstall whose old agent is gone), stay on the clone host it already has, mint a new
//! host (nothing matched), or — when another *live* agent with a different instance already
//! holds the host — treat the newcomer as a clone and give it a host of its own so the two
//! inventories never overwrite each other.
//!
//! Nothing here reads a clock or a database: the store supplies lookups and liveness.

use std::fmt;
use std::time::{Duration, SystemTime};

use cmdb_proto::identity::is_placeholder;
use cmdb_proto::model::HostIdentity;

use super::{AgentId, AgentRecord, HostId};

/// Longest key value kept verbatim; longer ones (a host with hundreds of MACs) are hashed.
const MAX_KEY_VALUE: usize = 256;

/// The kinds of identity key, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyKind {
    ProductUuid,
    SerialNumber,
    MachineId,
    Macs,
    Fqdn,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::ProductUuid => "product_uuid",
            KeyKind::SerialNumber => "serial_number",
            KeyKind::MachineId => "machine_id",
            KeyKind::Macs => "macs",
            KeyKind::Fqdn => "fqdn",
        }
    }
}

/// One normalised identity key, e.g. `product_uuid=4c4c4544-…`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    pub kind: KeyKind,
    pub value: String,
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kind.as_str(), self.value)
    }
}

/// Trimmed and lower-cased (vendors and tools disagree on the case of UUIDs and MACs),
/// hashed when too long; `None` for placeholders.
fn normalise(value: &str) -> Option<String> {
    if is_placeholder(value) {
        return None;
    }
    Some(bounded(value.trim().to_lowercase()))
}

fn bounded(value: String) -> String {
    if value.len() <= MAX_KEY_VALUE {
        return value;
    }
    let hash = blake3::hash(value.as_bytes()).to_hex();
    format!("b3:{}", &hash.as_str()[..32])
}

/// The identity's keys, best first. Empty when every value is a placeholder.
pub fn identity_keys(id: &HostIdentity) -> Vec<IdentityKey> {
    let single = |kind: KeyKind, value: &Option<String>| {
        value
            .as_deref()
            .and_then(normalise)
            .map(|value| IdentityKey { kind, value })
    };
    let mut macs: Vec<String> = id
        .macs
        .iter()
        .filter(|m| !is_placeholder(m))
        .map(|m| m.trim().to_lowercase())
        .collect();
    macs.sort();
    macs.dedup();
    let macs = (!macs.is_empty()).then(|| IdentityKey {
        kind: KeyKind::Macs,
        value: bounded(macs.join(",")),
    });
    [
        single(KeyKind::ProductUuid, &id.product_uuid),
        single(KeyKind::SerialNumber, &id.serial_number),
        single(KeyKind::MachineId, &id.machine_id),
        macs,
        single(KeyKind::Fqdn, &id.fqdn),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The first (best-ranked) key that `lookup` knows, with the host it maps to.
pub fn best_match<E>(
    keys: &[IdentityKey],
    mut lookup: impl FnMut(&IdentityKey) -> Result<Option<HostId>, E>,
) -> Result<Option<(HostId, IdentityKey)>, E> {
    for key in keys {
        if let Some(host) = lookup(key)? {
            return Ok(Some((host, key.clone())));
        }
    }
    Ok(None)
}

/// How long after a Shutdown event a last_seen still counts as that same, stopping agent.
pub const SHUTDOWN_SLACK: Duration = Duration::from_secs(60);

/// Whether an agent counts as live for clone detection: connected, or seen within
/// `window` — unless the last thing it did was announce a graceful shutdown.
pub fn is_live(agent: &AgentRecord, now: SystemTime, window: Duration) -> bool {
    if agent.connected {
        return true;
    }
    let Some(last_seen) = agent.last_seen else {
        return false;
    };
    // A graceful shutdown ends liveness. Heartbeats travel on their own lane and may land
    // just after the Shutdown event of the same stream, so a little slack is allowed.
    if let Some(shutdown) = &agent.last_shutdown
        && shutdown.received_at + SHUTDOWN_SLACK >= last_seen
    {
        return false;
    }
    // A last_seen in the future (clock step) counts as recent.
    now.duration_since(last_seen)
        .map(|age| age <= window)
        .unwrap_or(true)
}

/// Another agent already mapped to the matched host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    pub agent_id: AgentId,
    pub instance_id: String,
    pub live: bool,
}

/// The host the identifying agent is mapped to now, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CurrentHost {
    pub host_id: HostId,
    /// Set when that host was minted for a clone.
    pub clone_of: Option<HostId>,
}

/// Everything [`decide`] needs.
#[derive(Clone, Debug)]
pub struct Situation {
    pub agent_id: AgentId,
    pub instance_id: String,
    /// The host the best-ranked known key maps to, and that key.
    pub matched: Option<(HostId, IdentityKey)>,
    pub current: Option<CurrentHost>,
    /// Agents mapped to the matched host (the caller may be among them; it is ignored).
    pub others: Vec<Claimant>,
}

/// What to do with the identifying agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Map the agent to this host and index all its keys to it.
    Join { host_id: HostId },
    /// Nothing matched and the agent has no host: mint one and index the keys to it.
    Mint,
    /// The agent already has a clone host minted for it: keep it, and index only keys no
    /// other host holds (never steal the original's keys).
    StayClone { host_id: HostId },
    /// Another live agent with a different instance holds the matched host: mint a clone
    /// host for the caller (`clone_of` = `of`) and record the clone.
    Clone {
        of: HostId,
        live_agents: Vec<AgentId>,
        identity_key: String,
    },
}

/// Decides the identifying agent's host. Never merges a clone back silently: an agent with
/// a clone host stays on it.
pub fn decide(s: &Situation) -> Decision {
    let Some((matched, key)) = &s.matched else {
        return match &s.current {
            Some(CurrentHost {
                host_id,
                clone_of: Some(_),
            }) => Decision::StayClone {
                host_id: host_id.clone(),
            },
            Some(CurrentHost { host_id, .. }) => Decision::Join {
                host_id: host_id.clone(),
            },
            None => Decision::Mint,
        };
    };
    if let Some(CurrentHost {
        host_id,
        clone_of: Some(of),
    }) = &s.current
        && of == matched
    {
        return Decision::StayClone {
            host_id: host_id.clone(),
        };
    }
    let live: Vec<AgentId> = s
        .others
        .iter()
        .filter(|o| o.agent_id != s.agent_id && o.live && o.instance_id != s.instance_id)
        .map(|o| o.agent_id.clone())
        .collect();
    if live.is_empty() {
        Decision::Join {
            host_id: matched.clone(),
        }
    } else {
        Decision::Clone {
            of: matched.clone(),
            live_agents: live,
            identity_key: key.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn identity() -> HostIdentity {
        HostIdentity {
            hostname: Some("web-1".into()),
            fqdn: Some("Web-1.Example.COM".into()),
            machine_id: Some("0123abcd0123abcd0123abcd0123abcd".into()),
            product_uuid: Some("4C4C4544-0042-3510-8052-B4C04F564E32".into()),
            serial_number: Some("CZ1234ABCD".into()),
            board_serial: Some("B1".into()),
            cloud_instance_id: None,
            macs: vec!["52:54:00:AA:BB:02".into(), "52:54:00:aa:bb:01".into()],
        }
    }

    #[test]
    fn keys_are_ranked_and_normalised() {
        let keys: Vec<String> = identity_keys(&identity())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            keys,
            vec![
                "product_uuid=4c4c4544-0042-3510-8052-b4c04f564e32",
                "serial_number=cz1234abcd",
                "machine_id=0123abcd0123abcd0123abcd0123abcd",
                "macs=52:54:00:aa:bb:01,52:54:00:aa:bb:02",
                "fqdn=web-1.example.com",
            ]
        );
    }

    #[test]
    fn placeholders_and_hostname_are_never_keys() {
        let id = HostIdentity {
            hostname: Some("web-1".into()),
            fqdn: Some("  ".into()),
            machine_id: None,
            product_uuid: Some("00000000-0000-0000-0000-000000000000".into()),
            serial_number: Some("To Be Filled By O.E.M.".into()),
            board_serial: None,
            cloud_instance_id: None,
            macs: vec!["00:00:00:00:00:00".into(), "ff:ff:ff:ff:ff:ff".into()],
        };
        assert!(identity_keys(&id).is_empty());
    }

    #[test]
    fn long_values_are_bounded() {
        let id = HostIdentity {
            macs: (0..100)
                .map(|i| format!("52:54:00:00:00:{i:02x}"))
                .collect(),
            ..Default::default()
        };
        let keys = identity_keys(&id);
        assert_eq!(keys.len(), 1);
        assert!(keys[0].value.len() <= MAX_KEY_VALUE);
        assert!(keys[0].value.starts_with("b3:"));
    }

    #[test]
    fn best_match_takes_the_highest_ranked_known_key() {
        let keys = identity_keys(&identity());
        let found = best_match::<()>(&keys, |k| {
            Ok(match k.kind {
                KeyKind::MachineId => Some("host-b".to_owned()),
                KeyKind::Fqdn => Some("host-c".to_owned()),
                _ => None,
            })
        })
        .unwrap();
        let (host, key) = found.unwrap();
        assert_eq!(host, "host-b");
        assert_eq!(key.kind, KeyKind::MachineId);
    }

    fn situation(matched: Option<&str>, others: Vec<Claimant>) -> Situation {
        Situation {
            agent_id: "agt-new".into(),
            instance_id: "inst-new".into(),
            matched: matched.map(|h| {
                (
                    h.to_owned(),
                    IdentityKey {
                        kind: KeyKind::ProductUuid,
                        value: "u".into(),
                    },
                )
            }),
            current: None,
            others,
        }
    }

    fn claimant(id: &str, instance: &str, live: bool) -> Claimant {
        Claimant {
            agent_id: id.into(),
            instance_id: instance.into(),
            live,
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(&situation(None, vec![])), Decision::Mint);
        // Reinstall: the old agent is gone.
        assert_eq!(
            decide(&situation(
                Some("host-a"),
                vec![claimant("agt-old", "inst-old", false)]
            )),
            Decision::Join {
                host_id: "host-a".into()
            }
        );
        // Clone: the old agent is live with another instance.
        assert_eq!(
            decide(&situation(
                Some("host-a"),
                vec![claimant("agt-old", "inst-old", true)]
            )),
            Decision::Clone {
                of: "host-a".into(),
                live_agents: vec!["agt-old".into()],
                identity_key: "product_uuid=u".into(),
            }
        );
        // Re-enrolment of the same installation (same instance id) is not a clone.
        assert_eq!(
            decide(&situation(
                Some("host-a"),
                vec![claimant("agt-old", "inst-new", true)]
            )),
            Decision::Join {
                host_id: "host-a".into()
            }
        );
        // The caller itself is ignored among the others.
        assert_eq!(
            decide(&situation(
                Some("host-a"),
                vec![claimant("agt-new", "inst-other", true)]
            )),
            Decision::Join {
                host_id: "host-a".into()
            }
        );
        // A clone keeps its clone host, without a new record.
        let mut s = situation(Some("host-a"), vec![claimant("agt-old", "inst-old", true)]);
        s.current = Some(CurrentHost {
            host_id: "host-c".into(),
            clone_of: Some("host-a".into()),
        });
        assert_eq!(
            decide(&s),
            Decision::StayClone {
                host_id: "host-c".into()
            }
        );
        // Nothing matches, but the agent has a host: keep it.
        let mut s = situation(None, vec![]);
        s.current = Some(CurrentHost {
            host_id: "host-a".into(),
            clone_of: None,
        });
        assert_eq!(
            decide(&s),
            Decision::Join {
                host_id: "host-a".into()
            }
        );
    }

    #[test]
    fn liveness() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let window = Duration::from_secs(300);
        let mut a = AgentRecord::new("a", "i", "v", HostIdentity::default(), now);
        assert!(!is_live(&a, now, window), "never seen");
        a.last_seen = Some(now - Duration::from_secs(60));
        assert!(is_live(&a, now, window));
        a.last_seen = Some(now - Duration::from_secs(600));
        assert!(!is_live(&a, now, window), "too old");
        a.connected = true;
        assert!(is_live(&a, now, window), "connected");
        a.connected = false;
        a.last_seen = Some(now - Duration::from_secs(10));
        a.last_shutdown = Some(super::super::ShutdownRecord {
            at: now - Duration::from_secs(10),
            reason: "stop".into(),
            received_at: now - Duration::from_secs(10),
        });
        assert!(!is_live(&a, now, window), "said goodbye");
    }

    proptest! {
        /// Keys never contain placeholders, are bounded, and never depend on the hostname.
        #[test]
        fn keys_are_sane(
            uuid in proptest::option::of(".{0,40}"),
            serial in proptest::option::of(prop_oneof![Just("0".to_owned()), Just("Default string".to_owned()), ".{0,20}".prop_map(|s| s)]),
            hostname in proptest::option::of(".{0,20}"),
            macs in proptest::collection::vec("[0-9a-fA-F:]{0,17}", 0..5),
        ) {
            let id = HostIdentity {
                hostname: hostname.clone(),
                product_uuid: uuid,
                serial_number: serial,
                macs,
                ..Default::default()
            };
            let keys = identity_keys(&id);
            for k in &keys {
                prop_assert!(k.value.len() <= MAX_KEY_VALUE + 3);
                if k.kind != KeyKind::Macs {
                    prop_assert!(!is_placeholder(&k.value));
                }
            }
            let mut other = id.clone();
            other.hostname = Some("something-else".into());
            prop_assert_eq!(identity_keys(&other), keys);
        }
    }
}
