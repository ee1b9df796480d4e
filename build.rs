//! Compiles the protos (the v1 API, the cluster's status service, the peers' traffic) with protox (pure Rust, no system protoc) and
//! generates the prost messages plus tonic clients and servers. The encoded descriptor set is
//! kept in OUT_DIR too, for gRPC server reflection. Also names the commit being built, for
//! `agentkeeper --version`.

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/agentkeeper/v1/agentkeeper.proto",
        "proto/agentkeeper/v1/cluster.proto",
        "proto/agentkeeper/peer/v1/peer.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection on the client port describes the public API, not the peers' internal one.
    let mut public = descriptors.clone();
    public
        .file
        .retain(|file| !file.package().starts_with("agentkeeper.peer."));
    let encoded = prost::Message::encode_to_vec(&public);
    std::fs::write(out_dir.join("agentkeeper_descriptor.bin"), encoded)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    println!("cargo:rustc-env=AGENTKEEPER_GIT_COMMIT={}", git_commit());
    Ok(())
}

/// The commit `agentkeeper --version` names: `$AGENTKEEPER_GIT_COMMIT` when set (a build from a
/// tree without .git, such as a container build, is told it), else the checkout's HEAD, else
/// "unknown" rather than a failed build.
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=AGENTKEEPER_GIT_COMMIT");
    if let Some(commit) = std::env::var("AGENTKEEPER_GIT_COMMIT").ok().filter(|c| !c.is_empty()) {
        return commit;
    }
    // Built again when HEAD moves: a checkout changes HEAD, a commit the branch's ref. Only
    // files that exist are named: cargo would run this script on every build for a missing one.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = ["HEAD", "packed-refs"]
        .into_iter()
        .map(str::to_string)
        .chain(branch)
        .filter_map(|name| git(&["rev-parse", "--git-path", &name]));
    for path in watched.filter(|path| std::path::Path::new(path).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
}

/// What `git ARGS` prints, trimmed; None when git is missing or fails (no repository).
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
