//! cmdb-agent: discovers configuration items on a host and (later) streams them to the
//! collector.
//!
//! Data flows one way: [`discover`] runs every collector against a [`hostroot::HostRoot`]
//! under its own timeout and assembles an [`cmdb_proto::model::Inventory`]; [`output`]
//! renders it. The agent never listens on a socket and never writes to the host outside its
//! own state directory.
#![forbid(unsafe_code)]

pub mod budget;
pub mod command;
pub mod config;
pub mod delta;
pub mod discover;
pub mod enroll;
pub mod hostroot;
pub mod identity;
pub mod metrics;
pub mod monitor;
pub mod outbox;
pub mod output;
#[cfg(test)]
mod rss_probe;
pub mod run;
pub mod state;
pub mod tls;
pub mod transport;
pub mod watch;
