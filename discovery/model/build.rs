//! Compiles `proto/discovery.proto` with the vendored protoc (no system protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Edition 2021: set_var is safe; build scripts are single-threaded here.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=../proto/discovery.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Labels are maps; BTreeMap keeps their order stable.
        .btree_map(".")
        .compile_protos(&["../proto/discovery.proto"], &["../proto"])?;
    Ok(())
}
