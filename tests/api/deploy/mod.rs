//! The deployment files, checked as far as a machine without Google Cloud allows: the
//! Dockerfile's stages, sources and runtime user; cloudbuild.yaml's images, arguments, step
//! graph, substitutions, the files it names and the shell it runs; the settings they must
//! agree on with the code. Each checker is also run on a broken sample, so it can fail.

mod cloudbuild;
mod cloudbuild_checker;
mod deploy_page;
mod dockerfile;
mod images;

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// `rust-version` from Cargo.toml.
fn msrv() -> String {
    read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("Cargo.toml has rust-version")
}
