//! The README's client examples run in order, as written, against a real
//! broker: the `sh` blocks between the `cli-examples: begin` and
//! `cli-examples: end` marks become one bash script (`set -euo pipefail`),
//! with `sluice` on `PATH` and the README's `127.0.0.1:9092` replaced by
//! the test broker's address. A command that fails, or waits for records
//! that never come, fails the test; a few of the outputs the README
//! promises are checked too.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::Duration;

use sluice_tests::{sluice_bin, workspace_root, Broker, BrokerOptions, Tool};

/// Bound on the whole script: a dozen commands and a group join.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

const BEGIN: &str = "<!-- cli-examples: begin";
const END: &str = "<!-- cli-examples: end";

/// The address the README's examples use (the default bootstrap).
const README_BOOTSTRAP: &str = "127.0.0.1:9092";

/// The `sh` blocks between the marks, in order, each as its lines.
fn example_blocks(readme: &str) -> Vec<Vec<String>> {
    let begin = readme.find(BEGIN).expect("the README has a begin mark");
    let end = readme.find(END).expect("the README has an end mark");
    assert!(begin < end, "the marks are out of order");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in readme[begin..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().expect("in a block")),
            (Some(block), line) => block.push(line.to_string()),
            (None, _) => {}
        }
    }
    assert!(
        current.is_none(),
        "a block is not closed before the end mark"
    );
    blocks
}

#[test]
fn the_readme_client_examples_run_in_order() {
    let readme = fs::read_to_string(workspace_root().join("README.md")).expect("read README.md");
    let blocks = example_blocks(&readme);
    assert!(blocks.len() >= 3, "found {} example blocks", blocks.len());
    let broker =
        Broker::start(BrokerOptions::default().config("group.initial.rebalance.delay.ms", 0));
    let work = tempfile::tempdir().expect("a temporary directory");
    let bin = work.path().join("bin");
    fs::create_dir(&bin).expect("create bin/");
    symlink(sluice_bin(), bin.join("sluice")).expect("link sluice into bin/");
    let mut script = String::from("set -euo pipefail\n");
    // Examples before the README's own `export` reach the test broker too.
    script += &format!("export SLUICE_BOOTSTRAP_SERVERS={}\n", broker.bootstrap());
    for line in blocks.iter().flatten() {
        script += &line.replace(README_BOOTSTRAP, &broker.bootstrap());
        script.push('\n');
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Tool::new("bash")
        .args(["-c", &script])
        .env("PATH", path)
        .env("KAFKA_BOOTSTRAP_SERVERS", "")
        .current_dir(work.path())
        .timeout(SCRIPT_TIMEOUT)
        .run();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for promised in [
        "Created topic orders.\n",
        "LOG-START-OFFSET  LOG-END-OFFSET\n",
        "API ",
        "1 user-2=NULL [source=import]\n",
        "Nothing was committed: this is the plan. Add --execute to commit it.\n",
        "Deleted group billing.\n",
        "Deleted topic orders.\n",
    ] {
        assert!(
            stdout.contains(promised) || stderr.contains(promised),
            "the examples did not print {promised:?}\n---- stdout ----\n{stdout}\n---- stderr ----\n{stderr}"
        );
    }
    // The group read both records before its offsets were reset.
    assert!(
        stderr.contains("Consumed 2 records from orders as group billing.\n"),
        "{stderr}"
    );
}
