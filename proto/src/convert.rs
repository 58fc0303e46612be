//! The one place where the CI model ([`crate::model`]) and the protobuf messages
//! ([`crate::v1`]) are converted into each other.
//!
//! Model → proto is infallible. Proto → model is checked: a message from the network that
//! lacks a required field or carries an unknown enum value is an error, never a default.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::{
    AgentInfo, AttrValue, Attrs, CollectorReport, CollectorState, HostIdentity, Inventory, Item,
    Relation,
};
use crate::monitor::{MonitorKind, MonitorSpec};
use crate::v1;

/// A protobuf message that does not describe a valid model value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConvertError {
    /// A required sub-message or oneof is absent.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// An enum carries a value this version does not know.
    #[error("unknown {field} value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    /// A timestamp outside what the host clock can represent.
    #[error("invalid timestamp in {0}")]
    Timestamp(&'static str),
}

// === values ===

impl From<&AttrValue> for v1::Value {
    fn from(v: &AttrValue) -> Self {
        use v1::value::Kind;
        let kind = match v {
            AttrValue::Null => Kind::Null(v1::NullValue::NullValue as i32),
            AttrValue::Bool(b) => Kind::Bool(*b),
            AttrValue::Int(i) => Kind::Int(*i),
            AttrValue::Float(x) => Kind::Float(*x),
            AttrValue::Str(s) => Kind::String(s.clone()),
            AttrValue::List(l) => Kind::List(v1::ValueList {
                values: l.iter().map(v1::Value::from).collect(),
            }),
        };
        v1::Value { kind: Some(kind) }
    }
}

impl From<&v1::Value> for AttrValue {
    /// An empty oneof reads as null: absent and null mean the same for an attribute.
    fn from(v: &v1::Value) -> Self {
        use v1::value::Kind;
        match &v.kind {
            None | Some(Kind::Null(_)) => AttrValue::Null,
            Some(Kind::Bool(b)) => AttrValue::Bool(*b),
            Some(Kind::Int(i)) => AttrValue::Int(*i),
            Some(Kind::Float(x)) => AttrValue::Float(*x),
            Some(Kind::String(s)) => AttrValue::Str(s.clone()),
            Some(Kind::List(l)) => AttrValue::List(l.values.iter().map(AttrValue::from).collect()),
        }
    }
}

pub fn attrs_to_proto(attrs: &Attrs) -> std::collections::BTreeMap<String, v1::Value> {
    attrs
        .iter()
        .map(|(k, v)| (k.clone(), v1::Value::from(v)))
        .collect()
}

pub fn attrs_from_proto(attrs: &std::collections::BTreeMap<String, v1::Value>) -> Attrs {
    attrs
        .iter()
        .map(|(k, v)| (k.clone(), AttrValue::from(v)))
        .collect()
}

// === items and relations ===

impl From<&Item> for v1::Item {
    fn from(i: &Item) -> Self {
        v1::Item {
            class: i.class.clone(),
            key: i.key.clone(),
            attrs: attrs_to_proto(&i.attrs),
        }
    }
}

impl From<&v1::Item> for Item {
    fn from(i: &v1::Item) -> Self {
        Item {
            class: i.class.clone(),
            key: i.key.clone(),
            attrs: attrs_from_proto(&i.attrs),
        }
    }
}

impl From<&Relation> for v1::Relation {
    fn from(r: &Relation) -> Self {
        v1::Relation {
            from: r.from.clone(),
            to: r.to.clone(),
            kind: r.kind.clone(),
        }
    }
}

impl From<&v1::Relation> for Relation {
    fn from(r: &v1::Relation) -> Self {
        Relation {
            from: r.from.clone(),
            to: r.to.clone(),
            kind: r.kind.clone(),
        }
    }
}

// === collectors ===

impl From<CollectorState> for v1::CollectorState {
    fn from(s: CollectorState) -> Self {
        match s {
            CollectorState::Ok => v1::CollectorState::Ok,
            CollectorState::Partial => v1::CollectorState::Partial,
            CollectorState::Timeout => v1::CollectorState::Timeout,
            CollectorState::Error => v1::CollectorState::Error,
            CollectorState::PermissionDenied => v1::CollectorState::PermissionDenied,
            CollectorState::Unsupported => v1::CollectorState::Unsupported,
        }
    }
}

fn collector_state_from_i32(value: i32) -> Result<CollectorState, ConvertError> {
    let unknown = ConvertError::UnknownEnum {
        field: "CollectorStatus.state",
        value,
    };
    Ok(
        match v1::CollectorState::try_from(value).map_err(|_| unknown)? {
            v1::CollectorState::Ok => CollectorState::Ok,
            v1::CollectorState::Partial => CollectorState::Partial,
            v1::CollectorState::Timeout => CollectorState::Timeout,
            v1::CollectorState::Error => CollectorState::Error,
            v1::CollectorState::PermissionDenied => CollectorState::PermissionDenied,
            v1::CollectorState::Unsupported => CollectorState::Unsupported,
            v1::CollectorState::Unspecified => {
                return Err(ConvertError::UnknownEnum {
                    field: "CollectorStatus.state",
                    value,
                });
            }
        },
    )
}

impl From<&CollectorReport> for v1::CollectorStatus {
    fn from(c: &CollectorReport) -> Self {
        v1::CollectorStatus {
            name: c.name.clone(),
            state: v1::CollectorState::from(c.status) as i32,
            duration_ms: c.duration_ms,
            items: c.items,
            message: c.message.clone(),
            classes: c.classes.clone(),
        }
    }
}

impl TryFrom<&v1::CollectorStatus> for CollectorReport {
    type Error = ConvertError;
    fn try_from(c: &v1::CollectorStatus) -> Result<Self, ConvertError> {
        Ok(CollectorReport {
            name: c.name.clone(),
            status: collector_state_from_i32(c.state)?,
            duration_ms: c.duration_ms,
            items: c.items,
            message: c.message.clone(),
            classes: c.classes.clone(),
        })
    }
}

// === host identity ===

impl From<&HostIdentity> for v1::HostIdentity {
    fn from(h: &HostIdentity) -> Self {
        v1::HostIdentity {
            hostname: h.hostname.clone(),
            fqdn: h.fqdn.clone(),
            machine_id: h.machine_id.clone(),
            product_uuid: h.product_uuid.clone(),
            serial_number: h.serial_number.clone(),
            board_serial: h.board_serial.clone(),
            cloud_instance_id: h.cloud_instance_id.clone(),
            macs: h.macs.clone(),
        }
    }
}

impl From<&v1::HostIdentity> for HostIdentity {
    fn from(h: &v1::HostIdentity) -> Self {
        HostIdentity {
            hostname: h.hostname.clone(),
            fqdn: h.fqdn.clone(),
            machine_id: h.machine_id.clone(),
            product_uuid: h.product_uuid.clone(),
            serial_number: h.serial_number.clone(),
            board_serial: h.board_serial.clone(),
            cloud_instance_id: h.cloud_instance_id.clone(),
            macs: h.macs.clone(),
        }
    }
}

// === time ===

pub fn timestamp_from_system(t: SystemTime) -> prost_types::Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => prost_types::Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        },
        // Before 1970: clamp to the epoch rather than invent a negative time.
        Err(_) => prost_types::Timestamp {
            seconds: 0,
            nanos: 0,
        },
    }
}

pub fn system_from_timestamp(
    t: &prost_types::Timestamp,
    field: &'static str,
) -> Result<SystemTime, ConvertError> {
    let secs = u64::try_from(t.seconds).map_err(|_| ConvertError::Timestamp(field))?;
    let nanos = u32::try_from(t.nanos).map_err(|_| ConvertError::Timestamp(field))?;
    if nanos >= 1_000_000_000 {
        return Err(ConvertError::Timestamp(field));
    }
    UNIX_EPOCH
        .checked_add(Duration::new(secs, nanos))
        .ok_or(ConvertError::Timestamp(field))
}

// === inventory ===

impl From<&Inventory> for v1::Inventory {
    fn from(inv: &Inventory) -> Self {
        v1::Inventory {
            schema: inv.schema.clone(),
            collected_at: Some(timestamp_from_system(inv.collected_at)),
            agent: Some(v1::AgentInfo {
                version: inv.agent.version.clone(),
                instance_id: inv.agent.instance_id.clone(),
            }),
            host: Some(v1::HostIdentity::from(&inv.host)),
            collectors: inv
                .collectors
                .iter()
                .map(v1::CollectorStatus::from)
                .collect(),
            items: inv.items.iter().map(v1::Item::from).collect(),
            relations: inv.relations.iter().map(v1::Relation::from).collect(),
        }
    }
}

impl TryFrom<&v1::Inventory> for Inventory {
    type Error = ConvertError;
    fn try_from(inv: &v1::Inventory) -> Result<Self, ConvertError> {
        let collected_at = inv
            .collected_at
            .as_ref()
            .ok_or(ConvertError::Missing("Inventory.collected_at"))?;
        let agent = inv
            .agent
            .as_ref()
            .ok_or(ConvertError::Missing("Inventory.agent"))?;
        let host = inv
            .host
            .as_ref()
            .ok_or(ConvertError::Missing("Inventory.host"))?;
        Ok(Inventory {
            schema: inv.schema.clone(),
            collected_at: system_from_timestamp(collected_at, "Inventory.collected_at")?,
            agent: AgentInfo {
                version: agent.version.clone(),
                instance_id: agent.instance_id.clone(),
            },
            host: HostIdentity::from(host),
            collectors: inv
                .collectors
                .iter()
                .map(CollectorReport::try_from)
                .collect::<Result<_, _>>()?,
            items: inv.items.iter().map(Item::from).collect(),
            relations: inv.relations.iter().map(Relation::from).collect(),
        })
    }
}

// === monitors ===

impl From<MonitorKind> for v1::MonitorKind {
    fn from(k: MonitorKind) -> Self {
        match k {
            MonitorKind::SystemdUnit => v1::MonitorKind::SystemdUnit,
            MonitorKind::Process => v1::MonitorKind::Process,
            MonitorKind::TcpPort => v1::MonitorKind::TcpPort,
        }
    }
}

impl From<&MonitorSpec> for v1::MonitorSpec {
    fn from(m: &MonitorSpec) -> Self {
        v1::MonitorSpec {
            name: m.name.clone(),
            kind: v1::MonitorKind::from(m.kind) as i32,
            target: m.target.clone(),
        }
    }
}

impl TryFrom<&v1::MonitorSpec> for MonitorSpec {
    type Error = ConvertError;
    /// Only the kind is checked here; [`MonitorSpec::check`] checks name and target.
    fn try_from(m: &v1::MonitorSpec) -> Result<Self, ConvertError> {
        let kind = match v1::MonitorKind::try_from(m.kind) {
            Ok(v1::MonitorKind::SystemdUnit) => MonitorKind::SystemdUnit,
            Ok(v1::MonitorKind::Process) => MonitorKind::Process,
            Ok(v1::MonitorKind::TcpPort) => MonitorKind::TcpPort,
            Ok(v1::MonitorKind::Unspecified) | Err(_) => {
                return Err(ConvertError::UnknownEnum {
                    field: "MonitorSpec.kind",
                    value: m.kind,
                });
            }
        };
        Ok(MonitorSpec {
            name: m.name.clone(),
            kind,
            target: m.target.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SCHEMA;
    use proptest::prelude::*;
    use prost::Message;

    fn attr_value() -> impl Strategy<Value = AttrValue> {
        let leaf = prop_oneof![
            Just(AttrValue::Null),
            any::<bool>().prop_map(AttrValue::Bool),
            any::<i64>().prop_map(AttrValue::Int),
            // NaN never equals itself; the model never produces it.
            (-1e12f64..1e12).prop_map(AttrValue::Float),
            ".{0,16}".prop_map(AttrValue::Str),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop::collection::vec(inner, 0..4).prop_map(AttrValue::List)
        })
    }

    proptest! {
        #[test]
        fn inventory_round_trips_through_protobuf(
            attrs in prop::collection::btree_map("[a-z_]{1,8}", attr_value(), 0..6),
            key in ".{0,20}",
            secs in 0u64..4_000_000_000,
        ) {
            let inv = Inventory {
                schema: SCHEMA.into(),
                collected_at: UNIX_EPOCH + Duration::from_secs(secs),
                agent: AgentInfo { version: "0.1.0".into(), instance_id: "i".into() },
                host: HostIdentity { hostname: Some("h".into()), macs: vec!["00:11:22:33:44:55".into()], ..Default::default() },
                collectors: vec![CollectorReport {
                    name: "dpkg".into(), status: CollectorState::Partial, duration_ms: 3,
                    items: 1, message: Some("1 entry skipped".into()), classes: vec!["package".into()],
                }],
                items: vec![Item { class: "package".into(), key, attrs }],
                relations: vec![Relation { from: "a/b".into(), to: "c/d".into(), kind: "runs".into() }],
            };
            let bytes = v1::Inventory::from(&inv).encode_to_vec();
            let decoded = v1::Inventory::decode(bytes.as_slice()).unwrap();
            prop_assert_eq!(Inventory::try_from(&decoded).unwrap(), inv);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(msg) = v1::Inventory::decode(bytes.as_slice()) {
                let _ = Inventory::try_from(&msg);
            }
        }
    }

    #[test]
    fn unknown_collector_state_is_an_error() {
        let c = v1::CollectorStatus {
            state: 99,
            ..Default::default()
        };
        assert_eq!(
            CollectorReport::try_from(&c),
            Err(ConvertError::UnknownEnum {
                field: "CollectorStatus.state",
                value: 99
            })
        );
    }

    #[test]
    fn monitor_specs_round_trip_and_unknown_kinds_are_refused() {
        for kind in [
            MonitorKind::SystemdUnit,
            MonitorKind::Process,
            MonitorKind::TcpPort,
        ] {
            let m = MonitorSpec {
                name: "web".into(),
                kind,
                target: "80".into(),
            };
            assert_eq!(MonitorSpec::try_from(&v1::MonitorSpec::from(&m)), Ok(m));
        }
        for kind in [0, 99] {
            let p = v1::MonitorSpec {
                name: "x".into(),
                kind,
                target: "1".into(),
            };
            assert_eq!(
                MonitorSpec::try_from(&p),
                Err(ConvertError::UnknownEnum {
                    field: "MonitorSpec.kind",
                    value: kind
                })
            );
        }
    }
}
