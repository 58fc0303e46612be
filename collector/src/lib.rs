//! cmdb-collector: turns agent observations into a CMDB.
//!
//! Data flows one way: [`ingest`] (authenticated gRPC stream) → [`store`] (identify, apply
//! events as CI versions, exactly once) → [`http`] (the API). [`pki`] issues the agents'
//! certificates; [`tls`] builds both ends' rustls configurations.
#![forbid(unsafe_code)]

pub mod http;
pub mod pki;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod config;
pub mod ingest;
pub mod quickstart;
pub mod serve;
