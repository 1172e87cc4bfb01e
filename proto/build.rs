//! Compiles every `.proto` under `salesopp/` with protox (pure Rust: no `protoc` needed),
//! generates the tonic clients and servers, and writes the encoded file descriptor set that
//! the reflection service serves.

use std::path::{Path, PathBuf};

use protox::prost::Message as _;

fn proto_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, found)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            found.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let mut files = Vec::new();
    proto_files(&root.join("salesopp"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=salesopp");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("salesopp_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    // `prost::Name` on every message: the codec finds a request's descriptor by its name.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .btree_map(".")
        .codec_path("crate::codec::CheckedCodec")
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
