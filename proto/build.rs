//! Compiles every `.proto` under `salesopp/` with protox (pure Rust: no `protoc` needed),
//! generates the tonic clients and servers, and writes the encoded file descriptor set that
//! the reflection service serves.
//!
//! The contracts import `google/api/field_behavior.proto`, `google/api/resource.proto` and
//! `google/rpc/status.proto` (the batch calls' per-item errors).
//! They are not copied into this repository: the `google-cloud-googleapis` crate, a
//! dependency of this one, ships the upstream googleapis tree in its package, and
//! `cargo metadata` says where Cargo unpacked it (the registry, a vendor directory, ...).
//! Only the files the contracts import are read, and the descriptor set keeps them (with
//! `google/protobuf/descriptor.proto`), so reflection clients resolve every import.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The package that ships the googleapis protos, and its directory holding `google/`.
const GOOGLEAPIS_PACKAGE: &str = "google-cloud-googleapis";
const GOOGLEAPIS_SUBDIR: &str = "googleapis";
/// Overrides where the googleapis protos are read from.
const GOOGLEAPIS_DIR_VAR: &str = "SALESOPP_GOOGLEAPIS_DIR";

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

/// The include directory of the googleapis protos: the `googleapis/` folder of the
/// `google-cloud-googleapis` package this crate depends on, as resolved in Cargo.lock, or
/// `SALESOPP_GOOGLEAPIS_DIR` when set (a directory holding `google/api/*.proto`).
fn googleapis_include(manifest_dir: &Path) -> Result<PathBuf, Box<dyn Error>> {
    println!("cargo:rerun-if-env-changed={GOOGLEAPIS_DIR_VAR}");
    if let Some(dir) = std::env::var_os(GOOGLEAPIS_DIR_VAR) {
        return checked_include(PathBuf::from(dir));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Locked: this must not rewrite Cargo.lock. Offline first: the build has usually
    // downloaded every package of the workspace already; when it has not (say `cargo build
    // -p` on a fresh machine), `cargo metadata` may fetch the rest from the registry. The
    // platform filter spares it other platforms' crates.
    let mut failure = String::new();
    for offline in [true, false] {
        let mut command = Command::new(&cargo);
        command
            .args(["metadata", "--format-version", "1", "--locked"])
            .arg("--manifest-path")
            .arg(manifest_dir.join("Cargo.toml"));
        if offline {
            command.arg("--offline");
        }
        for platform in ["TARGET", "HOST"] {
            command
                .arg("--filter-platform")
                .arg(std::env::var(platform)?);
        }
        let output = command
            .output()
            .map_err(|error| format!("cannot run `cargo metadata`: {error}"))?;
        if output.status.success() {
            return googleapis_in(&output.stdout);
        }
        failure = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    }
    Err(
        format!("`cargo metadata` failed (set {GOOGLEAPIS_DIR_VAR} to bypass it): {failure}")
            .into(),
    )
}

/// The googleapis include directory from `cargo metadata` output.
fn googleapis_in(metadata: &[u8]) -> Result<PathBuf, Box<dyn Error>> {
    let metadata: serde_json::Value = serde_json::from_slice(metadata)?;
    let packages = metadata["packages"]
        .as_array()
        .ok_or("cargo metadata lists no packages")?;
    let package = |id: &str| packages.iter().find(|p| p["id"] == id);
    let this_name = std::env::var("CARGO_PKG_NAME")?;
    let this = metadata["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|id| id.as_str())
        .find(|id| package(id).is_some_and(|p| p["name"] == this_name.as_str()))
        .ok_or("this crate is not a workspace member in cargo metadata")?;
    // The version this crate resolved to, whichever others Cargo.lock may also hold.
    let dependency = metadata["resolve"]["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["id"] == this))
        .and_then(|node| node["deps"].as_array())
        .and_then(|deps| {
            deps.iter()
                .find(|dep| dep["name"] == GOOGLEAPIS_PACKAGE.replace('-', "_"))
        })
        .and_then(|dep| dep["pkg"].as_str())
        .ok_or_else(|| format!("{GOOGLEAPIS_PACKAGE} is not a dependency of this crate"))?;
    let package_dir = package(dependency)
        .and_then(|p| p["manifest_path"].as_str())
        .and_then(|manifest| Path::new(manifest).parent())
        .ok_or_else(|| format!("cargo metadata gives {GOOGLEAPIS_PACKAGE} no manifest path"))?;
    checked_include(package_dir.join(GOOGLEAPIS_SUBDIR))
}

fn checked_include(include: PathBuf) -> Result<PathBuf, Box<dyn Error>> {
    if !include.join("google/api/field_behavior.proto").is_file() {
        return Err(format!(
            "{} does not hold google/api/field_behavior.proto",
            include.display()
        )
        .into());
    }
    Ok(include)
}

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let mut files = Vec::new();
    proto_files(&root.join("salesopp"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=salesopp");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let googleapis = googleapis_include(&root)?;
    let mut compiler = protox::Compiler::new([root.as_path(), googleapis.as_path()])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)?;
    let descriptors = compiler.file_descriptor_set();
    for file in &descriptors.file {
        if file.name().starts_with("google/api/") || file.name().starts_with("google/rpc/") {
            println!(
                "cargo:rerun-if-changed={}",
                googleapis.join(file.name()).display()
            );
        }
    }
    // Encoded by protox itself: `prost_types` drops the extension options (the
    // google.api annotations) that reflection clients are meant to see.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("salesopp_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // Rust for the salesopp packages alone: the google/api files are in the set for their
    // options (and for reflection), and the generated types do not depend on them. The
    // batch calls' `google.rpc.Status` is tonic-types' own (the type tonic's rich errors are
    // made of), not a second copy: its file stays in the set (the generator reads its
    // message), mapped to that type.
    let mut generated = descriptors;
    generated
        .file
        .retain(|file| !file.name().starts_with("google/api/"));
    // `prost::Name` on every message: the codec finds a request's descriptor by its name.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .btree_map(".")
        .extern_path(".google.rpc", "::tonic_types::pb")
        .codec_path("crate::codec::CheckedCodec")
        .compile_fds_with_config(generated, config)?;
    Ok(())
}
