//! Compiles proto/cmdb/v1/*.proto with protox (pure Rust; no system protoc).

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
    tonic_prost_build::configure()
        // Deterministic attribute order: content hashes and diffs depend on it.
        .btree_map(".")
        // The rpc is named Connect; the generated `connect(endpoint)` constructor would
        // clash with it. Agents build their TLS channel explicitly anyway.
        .build_transport(false)
        // Small per-stream buffers: a collector holds one stream per agent (src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
