//! cmdb-collector: turns agent observations into a CMDB.
//!
//! Data flows one way: [`ingest`] (authenticated gRPC stream) → [`store`] (identify, apply
//! events as CI versions, exactly once) → [`http`] (the API). [`pki`] issues the agents'
//! certificates; [`tls`] builds both ends' rustls configurations.
#![forbid(unsafe_code)]

pub mod availability;
pub mod baselines;
pub mod changes;
pub mod config;
pub mod correlate;
pub mod drift;
pub mod http;
pub mod incidents;
pub mod ingest;
pub mod judgment;
pub mod pki;
pub mod policy;
pub mod quickstart;
pub mod selector;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
