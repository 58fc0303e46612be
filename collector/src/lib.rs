//! cmdb-collector: turns agent observations into a CMDB.
//!
//! Data flows one way: [`ingest`] (authenticated gRPC stream) → [`store`] (identify, apply
//! events as CI versions, exactly once) → [`http`] (the API); incidents leave through
//! [`notify`] (a durable outbox drained to webhook and ServiceNow sinks). [`audit_log`] is
//! the hash-chained record of every CMDB mutation. [`pki`] issues the agents'
//! certificates; [`tls`] builds both ends' rustls configurations.
#![forbid(unsafe_code)]

pub mod audit_log;
pub mod availability;
pub mod background;
pub mod baselines;
pub mod capacity;
pub mod changes;
pub mod cmdb_health;
pub mod compliance;
pub mod config;
pub mod config_audit;
pub mod console;
pub mod correlate;
pub mod drift;
pub mod host_links;

pub mod fleet;
pub mod http;
pub mod impact;
pub mod import_report;
pub mod incidents;
pub mod ingest;
pub mod judgment;
pub mod licenses;
pub mod notify;
pub mod pki;
pub mod policy;
pub mod quickstart;
pub mod selector;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
