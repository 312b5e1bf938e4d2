//! What ships beside the code: `sluice --version` names the commit, the
//! systemd unit is one systemd accepts (when `systemd-analyze` is here),
//! and the LICENSE is the one the manifests name.

use std::process::Command;
use std::time::Duration;

use sluice_tests::{find_in_path, run_sluice, sluice_bin, workspace_root};

#[test]
fn version_names_the_commit_it_was_built_from() {
    let run = run_sluice(&["--version"], None, Duration::from_secs(30));
    assert!(run.status.success());
    let printed = String::from_utf8_lossy(&run.stdout).trim().to_string();
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
    let commit = head.as_deref().unwrap_or("unknown");
    assert_eq!(
        printed,
        format!("sluice {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_systemd_unit_runs_serve_with_a_config_and_raised_limits() {
    let unit_path = workspace_root().join("deploy/sluice.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read deploy/sluice.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit sets no {key}"))
            .to_string()
    };
    assert!(value("ExecStart").ends_with("sluice serve --config /etc/sluice/sluice.toml"));
    let files: u64 = value("LimitNOFILE").parse().expect("a number of files");
    assert!(files >= 65_536, "LimitNOFILE={files}");
    assert_eq!(value("KillSignal"), "SIGTERM");
    let Some(analyze) = find_in_path("systemd-analyze") else {
        eprintln!("systemd-analyze not found: the unit's syntax was not checked by systemd");
        return;
    };
    // systemd checks that ExecStart names an executable: point it at the
    // binary under test.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let checked = dir.path().join("sluice.service");
    let bin = sluice_bin();
    std::fs::write(
        &checked,
        unit.replace("/usr/local/bin/sluice", &bin.to_string_lossy()),
    )
    .expect("write the unit to check");
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&checked)
        .output()
        .expect("run systemd-analyze");
    let said = String::from_utf8_lossy(&out.stderr);
    // Outside a booted systemd, verify may also complain about the
    // environment (no D-Bus, no manager); only lines about the unit count.
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("sluice.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn the_license_is_the_apache_license_the_manifests_name() {
    let root = workspace_root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("read Cargo.toml");
    assert!(manifest.contains("license = \"Apache-2.0\""));
    let license = std::fs::read_to_string(root.join("LICENSE")).expect("read LICENSE");
    assert!(license.contains("Apache License"));
    assert!(license.contains("Version 2.0, January 2004"));
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
    assert!(license.contains("APPENDIX: How to apply the Apache License to your work."));
}
