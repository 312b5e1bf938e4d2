//! Stamps the `sluice` binary with the commit it was built from, for
//! `sluice --version`: `git rev-parse` of the source tree, or `unknown`
//! when it is not a git checkout (a source archive) or git is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs git in this crate's directory; its trimmed stdout on success.
fn git(arguments: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(arguments)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    // Rebuild when HEAD moves: its file, and the branch it names (loose or
    // packed). Only files that exist are named; cargo would rerun the
    // script on every build for a missing one.
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        watched.push(Path::new(&git_dir).join("HEAD"));
    }
    if let (Some(common), Some(branch)) = (
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        watched.push(Path::new(&common).join(&branch));
        watched.push(Path::new(&common).join("packed-refs"));
    }
    for path in watched.iter().filter(|path| path.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!(
        "cargo:rustc-env=SLUICE_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
