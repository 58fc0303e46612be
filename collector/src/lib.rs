//! cmdb-collector: turns agent observations into a CMDB.
//!
//! Data flows one way: [`ingest`] (authenticated gRPC stream) → [`store`] (identify, apply
//! events as CI versions, exactly once) → [`http`] (the API); incidents leave through
//! [`notify`] (a durable outbox drained to webhook and ServiceNow sinks). [`audit_log`] is
//! the hash-chained record of every CMDB mutation. [`pki`] issues the agents'
//! certificates; [`tls`] builds both ends' rustls configurations.
#![forbid(unsafe_code)]

pub mod audit_log;
pub mod config;
pub mod http;
pub mod ingest;
pub mod notify;
pub mod pki;
pub mod quickstart;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
