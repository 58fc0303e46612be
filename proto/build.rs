//! Compiles proto/cmdb/v1/*.proto with protox (pure Rust; no system protoc).
//!
//! Two outputs from the one set of `.proto` files:
//! - `cmdb.v1` (`src/lib.rs`, module `v1`): every message, the client and the server.
//! - the collector's ingest view (module `ingest`, `OUT_DIR/ingest/`): the same service and
//!   wire format, derived here from the same descriptors with one field taken out of
//!   `ItemChange`: `old_attrs`, which the collector never reads (it keeps each CI's
//!   previous attributes itself). prost skips a field its message does not declare by
//!   stepping over its bytes, so the collector no longer builds and frees an attribute
//!   map per changed CI (src/ingest.rs says more). Only the messages on the path from the
//!   stream's message to `ItemChange` are generated again; every other type is `v1`'s.

use std::path::PathBuf;

use prost_types::{DescriptorProto, FileDescriptorSet};

/// The messages the ingest view declares itself (all on the path to `ItemChange`).
const VIEW_MESSAGES: &[&str] = &["AgentMessage", "Batch", "Event", "Delta", "ItemChange"];
/// The field of `ItemChange` the view leaves out, and its map entry type.
const DROPPED_FIELD: &str = "old_attrs";
const DROPPED_ENTRY: &str = "OldAttrsEntry";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=cmdb");
    let fds = protox::compile(
        [
            "cmdb/v1/inventory.proto",
            "cmdb/v1/events.proto",
            "cmdb/v1/agent.proto",
        ],
        ["."],
    )?;
    let view = ingest_view(&fds)?;
    tonic_prost_build::configure()
        // Deterministic attribute order: content hashes and diffs depend on it.
        .btree_map(".")
        // The rpc is named Connect; the generated `connect(endpoint)` constructor would
        // clash with it. Agents build their TLS channel explicitly anyway.
        .build_transport(false)
        // Small per-stream buffers: a collector holds one stream per agent (src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds.clone())?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("ingest");
    std::fs::create_dir_all(&out)?;
    let mut cfg = tonic_prost_build::configure()
        .btree_map(".")
        .build_client(false)
        .build_transport(false)
        .codec_path("crate::codec::LeanCodec")
        .out_dir(&out);
    for (proto, rust) in extern_types(&fds) {
        cfg = cfg.extern_path(proto, rust);
    }
    cfg.compile_fds(view)?;
    Ok(())
}

/// The descriptors with `ItemChange.old_attrs` (and its map entry type) taken out.
fn ingest_view(fds: &FileDescriptorSet) -> Result<FileDescriptorSet, String> {
    let mut view = fds.clone();
    let item_change = view
        .file
        .iter_mut()
        .filter(|f| f.package() == "cmdb.v1")
        .flat_map(|f| f.message_type.iter_mut())
        .find(|m| m.name() == "ItemChange")
        .ok_or("cmdb.v1.ItemChange not found")?;
    drop_field(item_change)?;
    Ok(view)
}

fn drop_field(m: &mut DescriptorProto) -> Result<(), String> {
    let before = m.field.len();
    m.field.retain(|f| f.name() != DROPPED_FIELD);
    m.nested_type.retain(|n| n.name() != DROPPED_ENTRY);
    if m.field.len() + 1 != before {
        return Err(format!("ItemChange.{DROPPED_FIELD} not found"));
    }
    Ok(())
}

/// Every top-level `cmdb.v1` message and enum the view does not declare itself, mapped to
/// `v1`'s type.
fn extern_types(fds: &FileDescriptorSet) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in fds.file.iter().filter(|f| f.package() == "cmdb.v1") {
        let messages = f.message_type.iter().map(|m| m.name());
        let enums = f.enum_type.iter().map(|e| e.name());
        for name in messages.chain(enums) {
            if !VIEW_MESSAGES.contains(&name) {
                out.push((format!(".cmdb.v1.{name}"), format!("crate::v1::{name}")));
            }
        }
    }
    out
}
