//! Generates the event types from proto/ with a pure-Rust protobuf compiler
//! (protox), so building needs no system `protoc`.

use std::{env, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto_file = proto_root.join("chexvision/v1/events.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());

    let descriptors = protox::compile([&proto_file], [&proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_bytes = descriptors.encode_to_vec();
    std::fs::write(out_dir.join("descriptors.bin"), &descriptor_bytes)?;

    prost_build::Config::new()
        // Timestamp comes from pbjson-types so that it maps to RFC 3339 in JSON.
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .build(&[".chexvision"])?;
    Ok(())
}
