//! Compiles `proto/pigeon/v1/pigeon.proto` with `protox` (pure Rust, so no
//! `protoc` binary is needed) and generates the types with `prost-build`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("pigeon/v1/pigeon.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let descriptors = protox::compile([&file], [&root])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
