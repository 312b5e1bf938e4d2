//! What a person reads after a run: `sluice-sim replay` writes a
//! `report.txt` that opens with the verdict, the replay command and every
//! checker's result, and a `timeline.html` that a real browser (headless
//! Chromium) draws with a lane per node and per client and every kind of
//! fault labelled; `--mutation` on a build without the feature says how to
//! build with it instead of panicking.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice_scenarios::replay_command;
use sluice_sim::check::CHECKERS;
use sluice_sim::disk::CrashFault;
use sluice_sim::report::CONVERGED;
use sluice_sim::timeline::{classify, Kind};
use sluice_sim::{Fault, Scheduled, Spec};

const SLUICE_SIM: &str = env!("CARGO_BIN_EXE_sluice-sim");

/// How long Chromium may take to load and dump the page.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(120);

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

#[test]
fn a_replayed_passing_seed_reports_pass_and_every_checker_passed() {
    let dir = scratch("replay-pass");
    let output = Command::new(SLUICE_SIM)
        .args([
            "replay",
            "--scenario",
            "crash-restart",
            "--seed",
            "1",
            "--out",
        ])
        .arg(&dir)
        .output()
        .expect("run sluice-sim");
    assert!(
        output.status.success(),
        "sluice-sim replay failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let report = std::fs::read_to_string(dir.join("report.txt")).expect("report.txt");
    let mut lines = report.lines();
    assert_eq!(
        lines.next(),
        Some("PASS crash-restart seed 0x1: every checker passed and the run converged"),
        "{report}"
    );
    assert_eq!(
        lines.next(),
        Some(format!("replay: {}", replay_command("crash-restart", 1, None)).as_str())
    );
    let opening: Vec<&str> = report.split("---- debug dump ----").take(1).collect();
    for name in CHECKERS.iter().chain([&CONVERGED]) {
        let line = opening[0]
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} is not listed:\n{report}"));
        assert!(line.ends_with(" passed"), "{line}");
    }
    assert!(report.contains("\nfaults ("), "{report}");
    assert!(report.contains("\nspec: Spec {"), "the debug dump follows");
    let timeline = std::fs::read_to_string(dir.join("timeline.html")).expect("timeline.html");
    assert!(timeline.starts_with("<!doctype html>"));
}

/// Runs `sluice-sim` with a mutation on this build: without the feature it
/// must refuse in one line that says how to build with it.
#[cfg(not(feature = "mutations"))]
#[test]
fn a_mutation_without_the_feature_says_how_to_build_it() {
    let commands: [&[&str]; 3] = [
        &["sweep", "--seeds", "1", "--mutation", "ack-before-sync"],
        &[
            "run",
            "--scenario",
            "network",
            "--seed",
            "1",
            "--mutation",
            "offset-gap",
        ],
        &[
            "replay",
            "--scenario",
            "network",
            "--seed",
            "1",
            "--mutation",
            "offset-gap",
        ],
    ];
    for arguments in commands {
        let output = Command::new(SLUICE_SIM)
            .args(arguments)
            .output()
            .expect("run sluice-sim");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{arguments:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        let rebuild = format!(
            "cargo run --release -p sluice-scenarios --features mutations --bin sluice-sim -- {}",
            arguments.join(" ")
        );
        assert!(stderr.contains(&rebuild), "{stderr}");
        assert!(output.stdout.is_empty(), "{arguments:?} ran anyway");
    }
}

/// Three nodes, producers, a reader and two group members, with every
/// kind of fault the nemesis has, each at a time of its own.
fn every_fault() -> Spec {
    let mut spec = sluice_scenarios::groups(3);
    spec.nodes = 3;
    spec.workload.group_members = 2;
    spec.workload.producers = 2;
    let faults = [
        (
            300,
            Fault::PartitionNodes {
                a: 1,
                b: 3,
                for_ms: 1_000,
            },
        ),
        (
            1_500,
            Fault::SlowLink {
                a: 1,
                b: 2,
                max_ms: 50,
                for_ms: 800,
            },
        ),
        (
            2_600,
            Fault::ClockJump {
                node: 1,
                delta_ms: 600_000,
            },
        ),
        (
            3_000,
            Fault::Crash {
                node: 2,
                damage: CrashFault::FlipBits,
                down_ms: 300,
            },
        ),
        (
            3_600,
            Fault::SlowDisk {
                node: 1,
                latency_ms: 100,
                for_ms: 600,
            },
        ),
        (
            4_600,
            Fault::DiskFull {
                node: 1,
                room_bytes: 0,
                for_ms: 400,
            },
        ),
        (
            5_600,
            Fault::Partition {
                client: "producer0".into(),
                node: 1,
                for_ms: 400,
            },
        ),
        (
            6_300,
            Fault::Latency {
                max_ms: 80,
                for_ms: 600,
            },
        ),
        (
            7_200,
            Fault::CrashHost {
                host: "member0".into(),
                down_ms: 500,
            },
        ),
        (
            8_200,
            Fault::Crash {
                node: 1,
                damage: CrashFault::LoseUnsynced,
                down_ms: 200,
            },
        ),
    ];
    spec.faults = faults
        .into_iter()
        .map(|(at_ms, fault)| Scheduled { at_ms, fault })
        .collect();
    spec
}

/// The lanes of `every_fault`, nodes first.
const LANES: [&str; 8] = [
    "node1",
    "node2",
    "node3",
    "producer0",
    "producer1",
    "reader",
    "member0",
    "member1",
];

/// (lane, label) of faults `every_fault` must show; "" is the strip of
/// every link.
const FAULT_LABELS: [(&str, &str); 14] = [
    ("node1", "cut off from node3"),
    ("node3", "cut off from node1"),
    ("node1", "slow link, up to 50 ms to node2"),
    ("node2", "slow link, up to 50 ms to node1"),
    ("node1", "clock +10.0 min"),
    ("node2", "crash, flip bits"),
    ("node1", "slow sync, 100 ms"),
    ("node1", "disk full, 0 bytes left"),
    ("node1", "cut off from producer0"),
    ("producer0", "cut off from node1"),
    ("", "slow messages, up to 80 ms"),
    ("member0", "crash"),
    ("node1", "crash, lose unsynced"),
    ("node1", "clock back to true time"),
];

/// The timeline of one run of `every_fault`, and its history's faults.
fn every_fault_run() -> &'static (String, Vec<String>) {
    static RUN: OnceLock<(String, Vec<String>)> = OnceLock::new();
    RUN.get_or_init(|| {
        let report = sluice_sim::run(every_fault(), true);
        let replay = replay_command(report.spec.scenario, report.spec.seed, None);
        let faults = report
            .history
            .entries()
            .into_iter()
            .filter_map(|entry| match entry.operation {
                sluice_sim::history::Operation::Fault { description } => Some(description),
                _ => None,
            })
            .collect();
        (sluice_sim::timeline::render(&report, &replay), faults)
    })
}

/// The value of attribute `name` in a tag, quoted either way.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=");
    let start = tag
        .match_indices(&key)
        .map(|(at, _)| at)
        .find(|&at| at == 0 || tag[..at].ends_with(char::is_whitespace))?
        + key.len();
    let quote = tag[start..].chars().next()?;
    let rest = &tag[start + 1..];
    Some(&rest[..rest.find(quote)?])
}

/// Every `<g>` of a class, as (its start tag, what follows up to the next `<g `).
fn groups<'a>(html: &'a str, class: &str) -> Vec<(&'a str, &'a str)> {
    html.split("<g ")
        .skip(1)
        .filter_map(|chunk| {
            let tag = &chunk[..chunk.find('>')?];
            let classes = attribute(tag, "class")?;
            classes
                .split(' ')
                .next()
                .filter(|first| *first == class)
                .map(|_| (tag, &chunk[tag.len()..]))
        })
        .collect()
}

/// The lanes a page draws, in order.
fn lanes(html: &str) -> Vec<String> {
    groups(html, "lane")
        .into_iter()
        .filter_map(|(tag, _)| attribute(tag, "data-lane").map(String::from))
        .collect()
}

/// (lane, kind, label) of every fault a page draws.
fn fault_labels(html: &str) -> BTreeSet<(String, String, String)> {
    groups(html, "fault")
        .into_iter()
        .filter_map(|(tag, body)| {
            let label_at = body.find("fault-label")?;
            let text = &body[label_at..];
            let text = &text[text.find('>')? + 1..];
            let label = &text[..text.find('<')?];
            Some((
                attribute(tag, "data-lane")?.to_string(),
                attribute(tag, "data-kind")?.to_string(),
                label.to_string(),
            ))
        })
        .collect()
}

fn assert_lanes_and_faults(html: &str, source: &str) {
    assert_eq!(lanes(html), LANES, "the lanes {source} holds");
    let found = fault_labels(html);
    for (lane, label) in FAULT_LABELS {
        assert!(
            found.iter().any(|(l, _, text)| l == lane && text == label),
            "{source} lacks the fault label {label:?} on lane {lane:?}; it has {found:?}"
        );
    }
    assert!(
        found.iter().all(|(_, kind, _)| kind != Kind::Other.class()),
        "{source} draws faults it did not recognise: {found:?}"
    );
}

#[test]
fn every_fault_the_nemesis_injects_is_recognised_and_labelled() {
    let (html, faults) = every_fault_run();
    assert!(faults.len() >= 20, "every fault and its heal: {faults:?}");
    for description in faults {
        assert_ne!(
            classify(description).kind,
            Kind::Other,
            "the timeline does not know how to draw {description:?}"
        );
    }
    assert_lanes_and_faults(html, "the page as written");
}

/// A Chromium to render with: `CHROMIUM` if set, else the first of the
/// usual names on `PATH`.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|candidate| candidate.is_file())
}

/// The DOM Chromium builds from a page, after its script ran.
fn dump_dom(chromium: &Path, page: &Path, dir: &Path) -> String {
    let (dom, log) = (dir.join("dom.html"), dir.join("chromium.log"));
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom).expect("create dom.html"))
        .stderr(std::fs::File::create(&log).expect("create chromium.log"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > CHROMIUM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium took over {CHROMIUM_TIMEOUT:?}; its log is {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}):\n{stderr}");
    std::fs::read_to_string(&dom).expect("read the dumped DOM")
}

#[test]
fn chromium_draws_a_lane_per_node_and_client_and_labels_the_faults() {
    let Some(chromium) = chromium() else {
        let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        assert!(
            !in_ci,
            "chromium is not installed, and CI must render the timeline: run scripts/install-test-deps"
        );
        // Straight to stderr: the test harness captures `eprintln!` of a
        // passing test, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPED: chromium not found (not on PATH, CHROMIUM unset), so the\n\
             !!! timeline was not rendered. Run scripts/install-test-deps to install it.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return;
    };
    let dir = scratch("timeline-chromium");
    let page = dir.join("timeline.html");
    std::fs::write(&page, &every_fault_run().0).expect("write timeline.html");
    let dom = dump_dom(&chromium, &page, &dir);
    assert_lanes_and_faults(&dom, "the DOM Chromium built");
    // The page's script measured every lane it drew: each has a size.
    let status = dom
        .split("id=\"drawn\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no drawn status in the DOM: {}", dir.display()));
    let drawn = attribute(status, "data-lanes-drawn");
    assert_eq!(
        drawn,
        Some(LANES.len().to_string().as_str()),
        "lanes with a size on screen; the DOM is in {}",
        dir.display()
    );
    let bars = dom.matches("class=\"op ").count();
    assert!(bars > 100, "{bars} operations drawn");

    // A click on an operation's bar shows it in the details panel, with a
    // link to its row in the history table.
    let first = first_bar(&dom);
    let clicked = dir.join("clicked.html");
    let click = "<script>document.querySelector('a.op rect').dispatchEvent(new MouseEvent('click', {bubbles: true, cancelable: true}));</script></body>";
    std::fs::write(&clicked, every_fault_run().0.replace("</body>", click))
        .expect("write clicked.html");
    let dom = dump_dom(&chromium, &clicked, &dir);
    let details = dom
        .split("<div id=\"details\">")
        .nth(1)
        .unwrap_or_else(|| panic!("the details panel is still hidden: {}", dir.display()));
    let details = &details[..details.find("</div>").unwrap_or(details.len())];
    assert!(
        details.starts_with(&format!("op {first}, "))
            && details.contains(&format!("<a href=\"#op-{first}\">")),
        "the details panel shows {details:?}, not op {first}"
    );
}

/// The number of the first operation bar in a DOM.
fn first_bar(dom: &str) -> String {
    let at = dom.find("<a href=\"#op-").expect("an operation bar");
    let tag = &dom[at..at + dom[at..].find('>').expect("a whole tag")];
    attribute(tag, "data-op").expect("its number").to_string()
}
