//! The timeline of one run (`timeline.html`): one self-contained page (no
//! network; one inline style sheet and one inline script) with the verdict
//! and each checker's result, a legend, and an SVG drawing with a labelled
//! time axis and a lane per node and per client. Faults are drawn on the
//! lanes they hit and labelled: a node or a member down from crash to
//! restart, a link cut from partition to repair, slow links, slow syncs, a
//! full disk, clock jumps, and the warnings and errors a node logged
//! (failed syncs, torn tails cut at recovery). Every operation is a bar
//! from invoke to complete; hovering shows it, clicking shows it in the
//! details panel, and the history table below holds every entry under an
//! anchor `#op-N` (N its line in `history.txt`). Operations that a
//! violation names are outlined.
//!
//! Faults come from the history as the nemesis words them (`classify`);
//! node logs come from the trace, which only a replay keeps.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::check::Violation;
use crate::history::{Entry, Operation, Outcome};
use crate::report::{self, CheckResult};
use crate::run::{node_host, Report};
use crate::trace;

/// Width of the lane names on the left.
const LABEL_PX: f64 = 150.0;
/// Height of the time axis on top.
const AXIS_PX: f64 = 36.0;
/// Height of the strip for faults on every link.
const STRIP_PX: f64 = 38.0;
const LANE_PX: f64 = 70.0;
/// Fault labels take three rows at the top of a lane.
const LABEL_ROW_PX: f64 = 12.0;
const LABEL_ROWS: usize = 3;
/// Operations are packed in rows under the labels, so overlapping ones show.
const OP_ROWS: usize = 4;
const OP_ROW_PX: f64 = 7.0;
const OP_BAR_PX: f64 = 5.0;
/// Horizontal scale, and the bounds of the drawing's width.
const PX_PER_SECOND: f64 = 110.0;
const PLOT_PX_MIN: f64 = 900.0;
const PLOT_PX_MAX: f64 = 9_000.0;
/// Room right of the plot for the labels of the last faults.
const RIGHT_PX: f64 = 200.0;
/// Space between two time ticks, at least.
const TICK_SPACING_PX_MIN: f64 = 70.0;
/// How far right a label may move to find room.
const LABEL_SHIFT_PX_MAX: f64 = 160.0;
/// Width of one character of a label (10 px monospace), to keep labels apart.
const CHAR_PX: f64 = 6.1;
const HEAL_LABEL: &str = "faults healed: liveness phase";
/// Longest label of a node's log line.
const LOG_LABEL_CHARS_MAX: usize = 32;
/// Lines of one node with one message this close make one mark.
const LOG_MERGE_US: u128 = 1_000_000;
/// Lines a mark's tooltip lists.
const LOG_LINES_PER_MARK_MAX: usize = 12;
/// Marks of one node's log drawn; the trace holds the rest.
const LOG_MARKERS_PER_LANE_MAX: usize = 40;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// What a fault does, for its colour and its legend entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A node or a client host down, from its crash to its restart.
    Down,
    /// A link cut, from its partition to its repair.
    Cut,
    /// Messages slowed, on every link or on one.
    SlowLinks,
    /// A node's syncs slowed.
    SlowSync,
    /// A node's disk full.
    DiskFull,
    /// A node's wall clock stepped.
    ClockJump,
    /// A node restarted to bring its log directory back after failed syncs.
    Restart,
    /// A warning or an error a node logged.
    NodeLog,
    /// A fault this page does not know how to draw: a mark on every lane.
    Other,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Down,
        Kind::Cut,
        Kind::SlowLinks,
        Kind::SlowSync,
        Kind::DiskFull,
        Kind::ClockJump,
        Kind::Restart,
        Kind::NodeLog,
        Kind::Other,
    ];

    /// The class of its SVG elements.
    pub fn class(self) -> &'static str {
        match self {
            Kind::Down => "down",
            Kind::Cut => "cut",
            Kind::SlowLinks => "slow-links",
            Kind::SlowSync => "slow-sync",
            Kind::DiskFull => "disk-full",
            Kind::ClockJump => "clock-jump",
            Kind::Restart => "restart",
            Kind::NodeLog => "node-log",
            Kind::Other => "other",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Kind::Down => "#444444",
            Kind::Cut => "#e07b00",
            Kind::SlowLinks => "#7b4fd6",
            Kind::SlowSync => "#1f77b4",
            Kind::DiskFull => "#a0522d",
            Kind::ClockJump => "#c2185b",
            Kind::Restart => "#00897b",
            Kind::NodeLog => "#d62828",
            Kind::Other => "#cc0000",
        }
    }

    fn legend(self) -> &'static str {
        match self {
            Kind::Down => "down: crash (and what happened to unsynced writes) to restart",
            Kind::Cut => "cut off: partition to repair",
            Kind::SlowLinks => "slow messages, on one link or on all",
            Kind::SlowSync => "slow syncs",
            Kind::DiskFull => "disk full",
            Kind::ClockJump => "wall clock jump",
            Kind::Restart => "restart after failed syncs",
            Kind::NodeLog => "a node's warning or error (trace.log)",
            Kind::Other => "another fault",
        }
    }

    /// A span of time (a band) or a moment (a mark).
    fn is_band(self) -> bool {
        matches!(
            self,
            Kind::Down | Kind::Cut | Kind::SlowLinks | Kind::SlowSync | Kind::DiskFull
        )
    }
}

/// Whether a history fault starts a band, ends one or is a moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Start,
    /// Ends the open bands of these kinds on the hosts.
    End(Vec<Kind>),
    Instant,
}

/// A fault of the history, as the timeline draws it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub kind: Kind,
    pub phase: Phase,
    /// The lanes it is drawn on; none for every link.
    pub hosts: Vec<String>,
    /// The short label, without the other end of a link.
    pub label: String,
}

fn words(name: &str) -> String {
    let mut text = String::new();
    for c in name.chars() {
        if c.is_uppercase() && !text.is_empty() {
            text.push(' ');
        }
        text.extend(c.to_lowercase());
    }
    text
}

/// Milliseconds as a short signed duration.
fn signed_duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "+" };
    let ms = ms.unsigned_abs();
    if ms >= 60_000 {
        format!("{sign}{:.1} min", ms as f64 / 60_000.0)
    } else {
        format!("{sign}{:.1} s", ms as f64 / 1_000.0)
    }
}

fn classified(kind: Kind, phase: Phase, hosts: &[&str], label: String) -> Classified {
    Classified {
        kind,
        phase,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        label,
    }
}

/// Reads a fault as the nemesis words it (`nemesis.rs`); what it does not
/// know becomes `Kind::Other`, drawn on every lane with its whole text.
pub fn classify(description: &str) -> Classified {
    hosts_down(description)
        .or_else(|| links_cut(description))
        .or_else(|| links_slow(description))
        .or_else(|| disk_faults(description))
        .or_else(|| clock_jumps(description))
        .unwrap_or_else(|| classified(Kind::Other, Phase::Instant, &[], description.into()))
}

/// "crash H, unsynced writes: D", "crash H", "restart H", "restart H after failed syncs".
fn hosts_down(d: &str) -> Option<Classified> {
    if let Some(rest) = d.strip_prefix("crash ") {
        let (host, label) = match rest.split_once(", unsynced writes: ") {
            Some((host, damage)) => (host, format!("crash, {}", words(damage))),
            None => (rest, "crash".into()),
        };
        return Some(classified(Kind::Down, Phase::Start, &[host], label));
    }
    let rest = d.strip_prefix("restart ")?;
    Some(match rest.strip_suffix(" after failed syncs") {
        Some(host) => {
            let label = "restart after failed syncs".into();
            classified(Kind::Restart, Phase::Instant, &[host], label)
        }
        None => classified(
            Kind::Down,
            Phase::End(vec![Kind::Down]),
            &[rest],
            "restart".into(),
        ),
    })
}

/// "partition A from B", "repair A to B".
fn links_cut(d: &str) -> Option<Classified> {
    if let Some((a, b)) = d
        .strip_prefix("partition ")
        .and_then(|r| r.split_once(" from "))
    {
        return Some(classified(
            Kind::Cut,
            Phase::Start,
            &[a, b],
            "cut off".into(),
        ));
    }
    let (a, b) = d.strip_prefix("repair ")?.split_once(" to ")?;
    let end = Phase::End(vec![Kind::Cut]);
    Some(classified(Kind::Cut, end, &[a, b], String::new()))
}

/// "message latency up to N ms", "latency between A and B up to N ms", and
/// their ends "... back to normal".
fn links_slow(d: &str) -> Option<Classified> {
    let end = || Phase::End(vec![Kind::SlowLinks]);
    if let Some(max) = d.strip_prefix("message latency up to ") {
        let label = format!("slow messages, up to {max}");
        return Some(classified(Kind::SlowLinks, Phase::Start, &[], label));
    }
    if d == "message latency back to normal" {
        return Some(classified(Kind::SlowLinks, end(), &[], String::new()));
    }
    let (a, rest) = d.strip_prefix("latency between ")?.split_once(" and ")?;
    if let Some(b) = rest.strip_suffix(" back to normal") {
        return Some(classified(Kind::SlowLinks, end(), &[a, b], String::new()));
    }
    let (b, max) = rest.split_once(" up to ")?;
    let label = format!("slow link, up to {max}");
    Some(classified(Kind::SlowLinks, Phase::Start, &[a, b], label))
}

/// "syncs of H take N ms", "disk of H full after N more bytes", "disk of H
/// back to normal".
fn disk_faults(d: &str) -> Option<Classified> {
    if let Some((host, latency)) = d
        .strip_prefix("syncs of ")
        .and_then(|r| r.split_once(" take "))
    {
        let label = format!("slow sync, {latency}");
        return Some(classified(Kind::SlowSync, Phase::Start, &[host], label));
    }
    let rest = d.strip_prefix("disk of ")?;
    if let Some(host) = rest.strip_suffix(" back to normal") {
        let end = Phase::End(vec![Kind::SlowSync, Kind::DiskFull]);
        return Some(classified(Kind::DiskFull, end, &[host], String::new()));
    }
    let (host, room) = rest.split_once(" full after ")?;
    let room = room.strip_suffix(" more bytes").unwrap_or(room);
    let label = format!("disk full, {room} bytes left");
    Some(classified(Kind::DiskFull, Phase::Start, &[host], label))
}

/// "clock of H jumps D ms, O ms off true time", "clock of H back to true time (D ms)".
fn clock_jumps(d: &str) -> Option<Classified> {
    let rest = d.strip_prefix("clock of ")?;
    if let Some((host, _)) = rest.split_once(" back to true time") {
        let label = "clock back to true time".into();
        return Some(classified(Kind::ClockJump, Phase::Instant, &[host], label));
    }
    let (host, delta) = rest.split_once(" jumps ")?;
    let delta_ms: i64 = delta.split(' ').next()?.parse().ok()?;
    let label = format!("clock {}", signed_duration(delta_ms));
    Some(classified(Kind::ClockJump, Phase::Instant, &[host], label))
}

/// One thing drawn on a lane (or, with no lane, on every one).
#[derive(Debug, Clone)]
struct Drawn {
    kind: Kind,
    lane: Option<String>,
    start_us: u128,
    /// The end of a band; `None` for a mark.
    end_us: Option<u128>,
    label: String,
    /// The label at the end of a band that healed.
    end_label: Option<String>,
    title: String,
}

/// The label of a fault on one of its lanes: a link names its other end.
fn lane_label(fault: &Classified, lane: &str) -> String {
    match fault.hosts.as_slice() {
        [a, b] => {
            let other = if lane == a { b } else { a };
            match fault.kind {
                Kind::Cut => format!("cut off from {other}"),
                _ => format!("{} to {other}", fault.label),
            }
        }
        _ => fault.label.clone(),
    }
}

/// Pairs each fault that starts a band with the heal that ends it; a band
/// never healed runs to `end_us`.
fn faults(entries: &[Entry], end_us: u128) -> Vec<Drawn> {
    let mut drawn = Vec::new();
    // Open bands by (kind, lanes), with their start and text.
    let mut open: BTreeMap<(Kind, Vec<String>), (u128, Classified, String)> = BTreeMap::new();
    for entry in entries {
        let Operation::Fault { description } = &entry.operation else {
            continue;
        };
        let at_us = entry.invoke_us;
        let fault = classify(description);
        let title = format!("{} s: {description}", report::seconds(at_us));
        match &fault.phase {
            Phase::Start => {
                let mut key = fault.hosts.clone();
                key.sort();
                if let Some(earlier) = open.insert((fault.kind, key), (at_us, fault, title)) {
                    drawn.extend(band(earlier, at_us, None));
                }
            }
            Phase::End(kinds) => {
                let mut key = fault.hosts.clone();
                key.sort();
                for kind in kinds {
                    if let Some(started) = open.remove(&(*kind, key.clone())) {
                        drawn.extend(band(started, at_us, Some(&title)));
                    }
                }
            }
            Phase::Instant => {
                let lanes: Vec<Option<String>> = if fault.hosts.is_empty() {
                    vec![None]
                } else {
                    fault.hosts.iter().cloned().map(Some).collect()
                };
                for lane in lanes {
                    drawn.push(Drawn {
                        kind: fault.kind,
                        label: lane
                            .as_deref()
                            .map_or(fault.label.clone(), |l| lane_label(&fault, l)),
                        lane,
                        start_us: at_us,
                        end_us: None,
                        end_label: None,
                        title: title.clone(),
                    });
                }
            }
        }
    }
    for started in open.into_values() {
        drawn.extend(band(started, end_us, None));
    }
    drawn
}

/// The bands of one fault from `start` to `end_us`, one per lane it hits.
fn band(start: (u128, Classified, String), end_us: u128, healed: Option<&str>) -> Vec<Drawn> {
    let (start_us, fault, title) = start;
    let end_label = healed.map(|_| {
        match fault.kind {
            Kind::Down => "restart",
            Kind::Cut => "repair",
            _ => "normal",
        }
        .to_string()
    });
    let title = match healed {
        Some(heal) => format!("{title}\n{heal}"),
        None => format!("{title}\n(not healed before the end)"),
    };
    let lanes: Vec<Option<String>> = if fault.hosts.is_empty() {
        vec![None]
    } else {
        fault.hosts.iter().cloned().map(Some).collect()
    };
    lanes
        .into_iter()
        .map(|lane| Drawn {
            kind: fault.kind,
            label: lane
                .as_deref()
                .map_or(fault.label.clone(), |l| lane_label(&fault, l)),
            lane,
            start_us,
            end_us: Some(end_us.max(start_us)),
            end_label: end_label.clone(),
            title: title.clone(),
        })
        .collect()
}

/// The warnings and errors each node logged, from a kept trace.
fn node_logs(lines: &[String], nodes: &[String]) -> Vec<Drawn> {
    // A node's lines with one message close together (a recovery's, or a
    // full disk refusing every append) make one mark.
    let mut runs: Vec<Vec<trace::Line>> = Vec::new();
    let mut open: BTreeMap<&str, usize> = BTreeMap::new();
    for line in lines {
        let Some(line) = trace::Line::parse(line) else {
            continue;
        };
        if !matches!(line.level, "WARN" | "ERROR") || !nodes.iter().any(|n| n == line.host) {
            continue;
        }
        let joins = open.get(line.host).copied().filter(|&run| {
            let last = runs[run].last().expect("runs are never empty");
            line.at_us - last.at_us <= LOG_MERGE_US
                && (line.at_us == last.at_us || line.message() == last.message())
        });
        match joins {
            Some(run) => runs[run].push(line),
            None => {
                open.insert(line.host, runs.len());
                runs.push(vec![line]);
            }
        }
    }
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    let mut drawn = Vec::new();
    for run in runs {
        let first = run[0];
        let count = per_node.entry(first.host).or_default();
        *count += 1;
        if *count > LOG_MARKERS_PER_LANE_MAX {
            continue;
        }
        drawn.push(log_mark(&run));
    }
    drawn
}

/// One mark for lines a node logged together.
fn log_mark(run: &[trace::Line]) -> Drawn {
    let first = run[0];
    let message = first.message();
    let mut label = if message.chars().count() > LOG_LABEL_CHARS_MAX {
        let cut: String = message.chars().take(LOG_LABEL_CHARS_MAX - 3).collect();
        format!("{cut}...")
    } else {
        message.to_string()
    };
    if run.len() > 1 {
        let _ = write!(label, " (x{})", run.len());
    }
    let mut title = format!("{} s, {} logged:", report::seconds(first.at_us), first.host);
    for line in run.iter().take(LOG_LINES_PER_MARK_MAX) {
        let _ = write!(
            title,
            "\n{} s {} {}",
            report::seconds(line.at_us),
            line.level,
            line.text
        );
    }
    if run.len() > LOG_LINES_PER_MARK_MAX {
        let _ = write!(
            title,
            "\n... {} more in trace.log",
            run.len() - LOG_LINES_PER_MARK_MAX
        );
    }
    Drawn {
        kind: Kind::NodeLog,
        lane: Some(first.host.to_string()),
        start_us: first.at_us,
        end_us: None,
        end_label: None,
        label,
        title,
    }
}

/// A lane: a node or a client process.
struct Lane {
    name: String,
    role: &'static str,
    note: String,
    top_px: f64,
}

/// The lanes: every node, then every client of the workload, then any
/// other process of the history.
fn lanes(report: &Report, entries: &[Entry]) -> Vec<Lane> {
    let spec = &report.spec;
    let mut named: Vec<(String, &'static str, String)> = (1..=spec.nodes)
        .map(|number| {
            let note = if number == 1 {
                "clients' broker, checked"
            } else {
                "linked to the others"
            };
            (node_host(number), "node", note.to_string())
        })
        .collect();
    let clients = (0..spec.workload.producers)
        .map(|i| (format!("producer{i}"), "producer"))
        .chain([("reader".to_string(), "reader")])
        .chain((0..spec.workload.group_members).map(|i| (format!("member{i}"), "group member")));
    for (name, role) in clients {
        named.push((name, "client", role.to_string()));
    }
    for entry in entries {
        if entry.process != "nemesis" && !named.iter().any(|(n, _, _)| *n == entry.process) {
            named.push((entry.process.clone(), "client", String::new()));
        }
    }
    named
        .into_iter()
        .enumerate()
        .map(|(index, (name, role, note))| Lane {
            name,
            role,
            note,
            top_px: AXIS_PX + STRIP_PX + index as f64 * LANE_PX,
        })
        .collect()
}

/// Maps simulated time to the drawing.
#[derive(Clone, Copy)]
struct Scale {
    end_us: u128,
    plot_px: f64,
}

impl Scale {
    fn new(end_us: u128) -> Scale {
        let seconds = end_us.max(1) as f64 / 1e6;
        Scale {
            end_us: end_us.max(1),
            plot_px: (seconds * PX_PER_SECOND).clamp(PLOT_PX_MIN, PLOT_PX_MAX),
        }
    }

    fn x(self, us: u128) -> f64 {
        LABEL_PX + us.min(self.end_us) as f64 / self.end_us as f64 * self.plot_px
    }

    /// The whole drawing, with room on the right for the last labels.
    fn width_px(self) -> f64 {
        LABEL_PX + self.plot_px + RIGHT_PX
    }

    /// The step between ticks: the smallest round one far enough apart.
    fn tick_us(self) -> u128 {
        const STEPS_MS: [u128; 12] = [
            10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
        ];
        let px_per_us = self.plot_px / self.end_us as f64;
        STEPS_MS
            .iter()
            .map(|ms| ms * 1_000)
            .find(|us| *us as f64 * px_per_us >= TICK_SPACING_PX_MIN)
            .unwrap_or(120_000_000)
    }
}

/// Keeps labels of one lane from writing over each other: each goes to
/// the first row free at its start.
#[derive(Default)]
struct LabelRows {
    ends_px: [f64; LABEL_ROWS],
}

impl LabelRows {
    /// The row and x of a label meant for `x`: the first row free there;
    /// when none is and the label must show (`crowd`), the row that frees
    /// first, the label moved right to where it frees (up to
    /// `LABEL_SHIFT_PX_MAX`, beyond which it overlaps); else none.
    fn place(&mut self, x: f64, label: &str, crowd: bool) -> Option<(usize, f64)> {
        let free = (0..LABEL_ROWS).find(|&row| self.ends_px[row] <= x);
        let (row, x) = match free {
            Some(row) => (row, x),
            None if crowd => {
                let row = (0..LABEL_ROWS)
                    .min_by(|a, b| self.ends_px[*a].total_cmp(&self.ends_px[*b]))
                    .unwrap_or(0);
                let frees = self.ends_px[row];
                (
                    row,
                    if frees - x <= LABEL_SHIFT_PX_MAX {
                        frees
                    } else {
                        x
                    },
                )
            }
            None => return None,
        };
        self.ends_px[row] = x + label.chars().count() as f64 * CHAR_PX + 8.0;
        Some((row, x))
    }
}

fn axis(svg: &mut String, scale: Scale, height: f64) {
    let _ = write!(svg, "<g class='axis'>");
    let step = scale.tick_us();
    let mut at = 0;
    while at <= scale.end_us {
        let x = scale.x(at);
        let label = if step < 1_000_000 {
            format!("{} s", report::seconds(at))
        } else {
            format!("{} s", at / 1_000_000)
        };
        let _ = write!(
            svg,
            "<line class='grid' x1='{x:.1}' x2='{x:.1}' y1='{AXIS_PX}' y2='{height}'/><line x1='{x:.1}' x2='{x:.1}' y1='{}' y2='{AXIS_PX}' stroke='#333'/><text class='tick' x='{x:.1}' y='{}' text-anchor='middle'>{label}</text>",
            AXIS_PX - 6.0,
            AXIS_PX - 10.0
        );
        at += step;
    }
    let _ = write!(
        svg,
        "<line x1='{LABEL_PX}' x2='{:.1}' y1='{AXIS_PX}' y2='{AXIS_PX}' stroke='#333'/><text x='4' y='{}' class='axis-name'>simulated time</text></g>",
        LABEL_PX + scale.plot_px,
        AXIS_PX - 10.0
    );
}

fn lane_backgrounds(svg: &mut String, lanes: &[Lane], scale: Scale) {
    let _ = write!(
        svg,
        "<g class='strip' data-strip='all-links'><rect x='0' y='{AXIS_PX}' width='{:.1}' height='{STRIP_PX}' fill='#f4f0fb'/><text x='4' y='{}' class='lane-name'>all links</text></g>",
        scale.width_px(),
        AXIS_PX + STRIP_PX / 2.0 + 4.0
    );
    for (index, lane) in lanes.iter().enumerate() {
        let fill = match (lane.role, index % 2) {
            ("node", _) => "#eef3f8",
            (_, 0) => "#ffffff",
            _ => "#f7f7f7",
        };
        let name = escape(&lane.name);
        let note = escape(&lane.note);
        let (top, width) = (lane.top_px, scale.width_px());
        let _ = write!(
            svg,
            "<g class='lane' data-lane='{name}' data-role='{}' id='lane-{name}'><rect x='0' y='{top:.1}' width='{width:.1}' height='{LANE_PX}' fill='{fill}' stroke='#ddd'/><text x='4' y='{:.1}' class='lane-name'>{name}</text><text x='4' y='{:.1}' class='lane-note'>{note}</text><title>{name}: {}</title></g>",
            lane.role,
            top + LANE_PX / 2.0,
            top + LANE_PX / 2.0 + 13.0,
            if note.is_empty() { lane.role.to_string() } else { format!("{}, {note}", lane.role) },
        );
    }
}

/// Where a label goes: after a fault's start, or after a band's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LabelAt {
    Start(usize),
    End(usize),
    Heal,
}

/// The label row of every fault's labels (an end's only where it fits) and of the heal line's, placed
/// left to right on each lane (the strip of every link is lane `None`).
fn label_rows(drawn: &[Drawn], scale: Scale, heal_us: u128) -> BTreeMap<LabelAt, (usize, f64)> {
    let mut labels: Vec<(f64, Option<&str>, LabelAt, &str)> = Vec::new();
    for (index, item) in drawn.iter().enumerate() {
        let lane = item.lane.as_deref();
        labels.push((
            scale.x(item.start_us),
            lane,
            LabelAt::Start(index),
            &item.label,
        ));
        if let (Some(end_us), Some(label)) = (item.end_us, &item.end_label) {
            labels.push((scale.x(end_us), lane, LabelAt::End(index), label));
        }
    }
    if heal_us <= scale.end_us {
        labels.push((scale.x(heal_us), None, LabelAt::Heal, HEAL_LABEL));
    }
    labels.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    let mut rows: BTreeMap<Option<&str>, LabelRows> = BTreeMap::new();
    // A fault's own label always shows; the end of a band only where it fits.
    labels
        .into_iter()
        .filter_map(|(x, lane, at, label)| {
            let crowd = !matches!(at, LabelAt::End(_));
            let placed = rows.entry(lane).or_default().place(x, label, crowd)?;
            Some((at, placed))
        })
        .collect()
}

/// The y of a label in `row` of a lane whose top is `top`.
fn label_y(top: f64, row: usize) -> f64 {
    top + (row as f64 + 1.0) * LABEL_ROW_PX - 2.0
}

fn draw_faults(svg: &mut String, drawn: &[Drawn], lanes: &[Lane], scale: Scale, heal_us: u128) {
    let rows = label_rows(drawn, scale, heal_us);
    let full_height = lanes.len() as f64 * LANE_PX;
    for (index, item) in drawn.iter().enumerate() {
        let lane = item
            .lane
            .as_deref()
            .and_then(|name| lanes.iter().find(|l| l.name == name));
        let (top, height) = match lane {
            Some(lane) => (lane.top_px, LANE_PX),
            None => (AXIS_PX, STRIP_PX + full_height),
        };
        let x = scale.x(item.start_us);
        let (class, colour) = (item.kind.class(), item.kind.colour());
        let _ = write!(
            svg,
            "<g class='fault {class}' data-kind='{class}' data-lane='{}'>",
            escape(lane.map_or("", |l| l.name.as_str()))
        );
        match item.end_us {
            Some(end_us) => {
                let _ = write!(
                    svg,
                    "<rect x='{x:.1}' y='{top:.1}' width='{:.1}' height='{height:.1}' fill='{colour}' fill-opacity='0.16' stroke='{colour}' stroke-opacity='0.7'/>",
                    (scale.x(end_us) - x).max(2.0)
                );
            }
            None => {
                let _ = write!(
                    svg,
                    "<line x1='{x:.1}' x2='{x:.1}' y1='{top:.1}' y2='{:.1}' stroke='{colour}' stroke-width='2'/><path d='M{:.1} {top:.1} l5 0 l-5 6 l-5 -6 z' fill='{colour}'/>",
                    top + height,
                    x - 5.0
                );
            }
        }
        let (start_row, label_x) = rows.get(&LabelAt::Start(index)).copied().unwrap_or((0, x));
        let _ = write!(
            svg,
            "<text class='fault-label' x='{:.1}' y='{:.1}' fill='{colour}'>{}</text>",
            label_x + 3.0,
            label_y(top, start_row),
            escape(&item.label)
        );
        let end = item.end_us.zip(item.end_label.as_ref());
        if let Some((label, (end_row, end_x))) = end
            .map(|(_, label)| label)
            .zip(rows.get(&LabelAt::End(index)))
        {
            let _ = write!(
                svg,
                "<text class='fault-end' x='{:.1}' y='{:.1}' fill='{colour}'>{}</text>",
                end_x + 3.0,
                label_y(top, *end_row),
                escape(label)
            );
        }
        let _ = write!(svg, "<title>{}</title></g>", escape(&item.title));
    }
    if heal_us <= scale.end_us {
        let x = scale.x(heal_us);
        let (row, label_x) = rows.get(&LabelAt::Heal).copied().unwrap_or((0, x));
        let _ = write!(
            svg,
            "<g class='heal'><line x1='{x:.1}' x2='{x:.1}' y1='{AXIS_PX}' y2='{:.1}' stroke='#222' stroke-dasharray='6 4'/><text class='heal-label' x='{:.1}' y='{:.1}'>{HEAL_LABEL}</text><title>{} s: the safety phase ends; every fault heals and the run must converge</title></g>",
            AXIS_PX + STRIP_PX + full_height,
            label_x + 3.0,
            label_y(AXIS_PX, row),
            report::seconds(heal_us)
        );
    }
}

/// Each operation's bar, packed into rows within its lane; operations a
/// violation names are drawn last, outlined.
fn draw_operations(
    svg: &mut String,
    entries: &[Entry],
    lanes: &[Lane],
    scale: Scale,
    flagged: &BTreeMap<usize, Vec<&Violation>>,
) {
    let mut ends: BTreeMap<&str, [u128; OP_ROWS]> = BTreeMap::new();
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&index| (entries[index].invoke_us, index));
    let mut last = Vec::new();
    for index in order {
        let entry = &entries[index];
        if matches!(entry.operation, Operation::Fault { .. }) {
            continue;
        }
        let Some(lane) = lanes.iter().find(|l| l.name == entry.process) else {
            continue;
        };
        let end_us = entry.complete_us.unwrap_or(scale.end_us);
        let rows = ends.entry(lane.name.as_str()).or_default();
        let row = (0..OP_ROWS)
            .find(|&row| rows[row] <= entry.invoke_us)
            .unwrap_or(index % OP_ROWS);
        rows[row] = rows[row].max(end_us);
        let y = lane.top_px + LABEL_ROWS as f64 * LABEL_ROW_PX + 4.0 + row as f64 * OP_ROW_PX;
        let bar = bar(index, entry, y, scale, flagged.get(&index));
        if flagged.contains_key(&index) {
            last.push(bar);
        } else {
            svg.push_str(&bar);
        }
    }
    for bar in last {
        svg.push_str(&bar);
    }
}

fn outcome_class(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::Failed(_) => "failed",
        Outcome::Unknown => "unknown",
    }
}

fn bar(
    index: usize,
    entry: &Entry,
    y: f64,
    scale: Scale,
    flagged: Option<&Vec<&Violation>>,
) -> String {
    let number = report::op_number(index);
    let start = scale.x(entry.invoke_us);
    let end = scale.x(entry.complete_us.unwrap_or(scale.end_us));
    let mut title = format!(
        "op {number}, {}: {} s, {}\n{}",
        entry.process,
        report::span(entry),
        report::describe_outcome(&entry.outcome),
        report::describe(&entry.operation)
    );
    for violation in flagged.into_iter().flatten() {
        let _ = write!(title, "\n[{}] {}", violation.checker, violation.detail);
    }
    let class = outcome_class(&entry.outcome);
    let (extra, marker) = match flagged {
        Some(_) => (
            " offending",
            format!(
                "<path d='M{start:.1} {:.1} l4 -6 l-8 0 z' fill='#000'/>",
                y - 1.0
            ),
        ),
        None => ("", String::new()),
    };
    format!(
        "<a href='#op-{number}' class='op {class}{extra}' data-op='{number}'>{marker}<rect x='{start:.1}' y='{y:.1}' width='{:.1}' height='{OP_BAR_PX}'/><title>{}</title></a>",
        (end - start).max(1.5),
        escape(&title)
    )
}

fn legend() -> String {
    let mut html = String::from("<div class='legend'><b>Legend</b>");
    let swatch = |class: &str, text: &str| {
        format!(
            "<span class='legend-item'><svg width='26' height='12'><rect class='{class}' x='1' y='3' width='24' height='6'/></svg>{text}</span>"
        )
    };
    html.push_str(&swatch("ok", "operation answered"));
    html.push_str(&swatch("failed", "operation failed"));
    html.push_str(&swatch("unknown", "no answer"));
    html.push_str(&swatch(
        "offending",
        "named by a violation (outlined, marked)",
    ));
    for kind in Kind::ALL {
        let colour = kind.colour();
        let mark = if kind.is_band() {
            format!("<rect x='1' y='1' width='24' height='10' fill='{colour}' fill-opacity='0.16' stroke='{colour}'/>")
        } else {
            format!("<line x1='13' x2='13' y1='0' y2='12' stroke='{colour}' stroke-width='2'/><path d='M8 0 l10 0 l-5 6 z' fill='{colour}'/>")
        };
        let _ = write!(
            html,
            "<span class='legend-item' data-kind='{}'><svg width='26' height='12'>{mark}</svg>{}</span>",
            kind.class(),
            kind.legend()
        );
    }
    html.push_str("<span class='legend-item'><svg width='26' height='12'><line x1='13' x2='13' y1='0' y2='12' stroke='#222' stroke-dasharray='3 2'/></svg>faults healed</span></div>");
    html
}

fn header(report: &Report, replay: &str, results: &[CheckResult]) -> String {
    let verdict = report::verdict(report);
    let class = if report.passed() { "pass" } else { "fail" };
    let mut html = format!(
        "<h1 class='{class}'>{}</h1><p>replay: <code>{}</code></p>",
        escape(&verdict),
        escape(replay)
    );
    if let Some(name) = report::mutation(report) {
        let _ = write!(
            html,
            "<p>mutation <b>{}</b>: a node broken on purpose; the checkers are expected to catch it.</p>",
            escape(name)
        );
    }
    html.push_str("<ul class='checkers'>");
    for result in results {
        let (class, text) = match result.problems.first() {
            None => ("pass", "passed".to_string()),
            Some(first) => (
                "fail",
                format!(
                    "FAILED, {} violation(s); first: {}",
                    result.problems.len(),
                    first
                ),
            ),
        };
        let _ = write!(
            html,
            "<li class='checker {class}' data-checker='{}'><b>{}</b> {}</li>",
            escape(&result.name),
            escape(&result.name),
            escape(&text)
        );
    }
    html.push_str("</ul>");
    html
}

fn history_table(entries: &[Entry], flagged: &BTreeMap<usize, Vec<&Violation>>) -> String {
    let mut html = String::from(
        "<h2>History</h2><table id='history'><thead><tr><th>op</th><th>invoke s</th><th>complete s</th><th>process</th><th>outcome</th><th>operation</th><th>named by</th></tr></thead><tbody>",
    );
    for (index, entry) in entries.iter().enumerate() {
        let number = report::op_number(index);
        let class = match entry.operation {
            Operation::Fault { .. } => "fault",
            _ => outcome_class(&entry.outcome),
        };
        let named: Vec<String> = flagged
            .get(&index)
            .into_iter()
            .flatten()
            .map(|v| format!("[{}] {}", v.checker, v.detail))
            .collect();
        let _ = write!(
            html,
            "<tr id='op-{number}' class='{class}{}'><td>{number}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if named.is_empty() { "" } else { " offending" },
            report::seconds(entry.invoke_us),
            entry.complete_us.map_or("?".to_string(), report::seconds),
            escape(&entry.process),
            escape(&report::describe_outcome(&entry.outcome)),
            escape(&report::describe(&entry.operation)),
            escape(&named.join("; "))
        );
    }
    html.push_str("</tbody></table>");
    html
}

const STYLE: &str = "body{font-family:sans-serif;margin:12px;color:#222}\
h1{font-size:20px;margin:4px 0}h1.pass{color:#1b7a2b}h1.fail{color:#b00020}\
code{background:#f3f3f3;padding:1px 4px}\
ul.checkers{columns:2;font-size:13px;padding-left:18px}li.pass{color:#1b7a2b}li.fail{color:#b00020}\
.legend{font-size:12px;margin:8px 0;line-height:20px}.legend-item{margin-right:14px;white-space:nowrap}\
.legend-item svg{vertical-align:middle;margin-right:4px}\
#scroll{overflow-x:auto;border:1px solid #ccc}\
svg.timeline text{font-family:monospace;font-size:10px}\
svg.timeline .lane-name{font-size:12px;font-weight:bold}svg.timeline .lane-note{fill:#666}\
svg.timeline .tick{font-size:11px}svg.timeline .grid{stroke:#e4e4e4}\
svg.timeline .heal-label{font-size:11px}\
.ok{fill:#2a9d3a}.failed{fill:#d62828}.unknown{fill:#9a9a9a}\
.offending{stroke:#000;stroke-width:1.5}a.op{cursor:pointer}a.op:hover rect{stroke:#000;stroke-width:1}\
#details{position:sticky;top:0;background:#fffbe6;border:1px solid #e0c200;padding:6px;font-size:13px;white-space:pre-wrap;z-index:1}\
table{border-collapse:collapse;font-size:12px;margin-top:8px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}\
tr.fault td{background:#fdecea}tr.failed td{color:#b00020}tr.unknown td{color:#777}tr.offending td{background:#fff3c4;font-weight:bold}\
tr:target td{background:#ffe066}";

/// Shows the clicked operation's row of the history table in the details
/// panel, and reports what the browser drew (lanes with a size).
const SCRIPT: &str = "(function(){\
var panel=document.getElementById('details');\
document.querySelector('svg.timeline').addEventListener('click',function(event){\
var op=event.target.closest('a.op');if(!op)return;event.preventDefault();\
var number=op.getAttribute('data-op');var row=document.getElementById('op-'+number);if(!row)return;\
var cells=Array.prototype.map.call(row.cells,function(c){return c.textContent;});\
panel.textContent='op '+cells[0]+', '+cells[3]+': '+cells[1]+' to '+cells[2]+' s, '+cells[4]+'\\n'+cells[5]+(cells[6]?'\\n'+cells[6]:'')+'\\n';\
var link=document.createElement('a');link.href='#op-'+number;link.textContent='row in the history table';panel.appendChild(link);\
panel.hidden=false;});\
var lanes=document.querySelectorAll('svg.timeline .lane');var drawn=0;\
lanes.forEach(function(lane){var box=lane.getBBox();if(box.width>0&&box.height>0)drawn++;});\
var status=document.getElementById('drawn');status.textContent=drawn+' of '+lanes.length+' lanes drawn';\
status.setAttribute('data-lanes-drawn',drawn);})();";

/// The whole `timeline.html` of a run; `replay` is the command that reruns it.
pub fn render(report: &Report, replay: &str) -> String {
    let entries = report.history.entries();
    let results = report::results(report);
    let flagged = report::offending(&entries, &report.violations);
    let lanes = lanes(report, &entries);
    let end_us = entries
        .iter()
        .map(|e| e.complete_us.unwrap_or(e.invoke_us))
        .chain([report.simulated.as_micros()])
        .max()
        .unwrap_or(1);
    let scale = Scale::new(end_us);
    let height = AXIS_PX + STRIP_PX + lanes.len() as f64 * LANE_PX + 4.0;
    let nodes: Vec<String> = lanes
        .iter()
        .filter(|l| l.role == "node")
        .map(|l| l.name.clone())
        .collect();
    let mut drawn = faults(&entries, end_us);
    drawn.extend(node_logs(&report.trace.lines(), &nodes));
    let mut svg = format!(
        "<svg class='timeline' xmlns='http://www.w3.org/2000/svg' width='{:.0}' height='{height:.0}'>",
        scale.width_px()
    );
    lane_backgrounds(&mut svg, &lanes, scale);
    axis(&mut svg, scale, height);
    let heal_us = report.spec.safety_ms as u128 * 1_000;
    draw_faults(&mut svg, &drawn, &lanes, scale, heal_us);
    draw_operations(&mut svg, &entries, &lanes, scale, &flagged);
    svg.push_str("</svg>");
    let title = format!("{} seed {:#x}", report.spec.scenario, report.spec.seed);
    format!(
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style></head><body>{}{}<p>Simulated time runs left to right, {} s in all. Hover a bar or a fault for its details; click a bar to show it here, with a link to its row in the history table (op N is line N of history.txt). <span id='drawn'></span></p><div id='details' hidden></div><div id='scroll'>{svg}</div>{}<script>{SCRIPT}</script></body></html>\n",
        header(report, replay, &results),
        legend(),
        report::seconds(end_us),
        history_table(&entries, &flagged),
        title = escape(&title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(at_ms: u128, description: &str) -> Entry {
        Entry {
            process: "nemesis".into(),
            operation: Operation::Fault {
                description: description.into(),
            },
            invoke_us: at_ms * 1_000,
            complete_us: Some(at_ms * 1_000),
            outcome: Outcome::Ok,
        }
    }

    /// Every wording of `nemesis.rs`, with what the timeline makes of it.
    #[test]
    fn each_fault_of_the_nemesis_is_classified() {
        let start =
            |kind, hosts: &[&str], label: &'static str| (kind, Phase::Start, hosts.len(), label);
        let cases = [
            (
                "crash node2, unsynced writes: TearLastSector",
                start(Kind::Down, &["node2"], "crash, tear last sector"),
            ),
            ("crash member0", start(Kind::Down, &["member0"], "crash")),
            (
                "partition producer1 from node1",
                start(Kind::Cut, &["producer1", "node1"], "cut off"),
            ),
            (
                "message latency up to 120 ms",
                start(Kind::SlowLinks, &[], "slow messages, up to 120 ms"),
            ),
            (
                "latency between node1 and node3 up to 7 ms",
                start(
                    Kind::SlowLinks,
                    &["node1", "node3"],
                    "slow link, up to 7 ms",
                ),
            ),
            (
                "syncs of node1 take 300 ms",
                start(Kind::SlowSync, &["node1"], "slow sync, 300 ms"),
            ),
            (
                "disk of node1 full after 19567 more bytes",
                start(Kind::DiskFull, &["node1"], "disk full, 19567 bytes left"),
            ),
        ];
        for (description, (kind, phase, hosts, label)) in cases {
            let classified = classify(description);
            assert_eq!(
                (
                    classified.kind,
                    classified.phase,
                    classified.hosts.len(),
                    classified.label.as_str()
                ),
                (kind, phase, hosts, label),
                "{description}"
            );
        }
        let ends = [
            ("restart node1", Kind::Down, vec![Kind::Down]),
            ("repair member1 to node1", Kind::Cut, vec![Kind::Cut]),
            (
                "message latency back to normal",
                Kind::SlowLinks,
                vec![Kind::SlowLinks],
            ),
            (
                "latency between node1 and node2 back to normal",
                Kind::SlowLinks,
                vec![Kind::SlowLinks],
            ),
            (
                "disk of node3 back to normal",
                Kind::DiskFull,
                vec![Kind::SlowSync, Kind::DiskFull],
            ),
        ];
        for (description, kind, closes) in ends {
            let classified = classify(description);
            assert_eq!(
                (classified.kind, classified.phase),
                (kind, Phase::End(closes)),
                "{description}"
            );
        }
        let instants = [
            (
                "restart node1 after failed syncs",
                Kind::Restart,
                "restart after failed syncs",
            ),
            (
                "clock of node1 jumps -1010097 ms, -1010097 ms off true time",
                Kind::ClockJump,
                "clock -16.8 min",
            ),
            (
                "clock of node2 jumps +2500 ms, +2500 ms off true time",
                Kind::ClockJump,
                "clock +2.5 s",
            ),
            (
                "clock of node1 back to true time (+2344167 ms)",
                Kind::ClockJump,
                "clock back to true time",
            ),
            ("a meteor hits node1", Kind::Other, "a meteor hits node1"),
        ];
        for (description, kind, label) in instants {
            let classified = classify(description);
            assert_eq!(
                (classified.kind, classified.phase, classified.label.as_str()),
                (kind, Phase::Instant, label),
                "{description}"
            );
        }
    }

    /// Kind, lane, start and end in ms, label, end label.
    type Band<'a> = (
        Kind,
        Option<&'a str>,
        u128,
        Option<u128>,
        &'a str,
        Option<&'a str>,
    );

    #[test]
    fn a_fault_and_its_heal_make_one_band_per_lane_it_hits() {
        let entries = [
            fault(100, "partition producer0 from node1"),
            fault(200, "crash node1, unsynced writes: KeepPrefix"),
            fault(250, "repair producer0 to node1"),
            fault(300, "restart node1"),
            fault(400, "syncs of node1 take 5 ms"),
            fault(500, "clock of node1 jumps +1000 ms, +1000 ms off true time"),
        ];
        let drawn = faults(&entries, 900_000);
        let bands: Vec<Band> = drawn
            .iter()
            .map(|d| {
                (
                    d.kind,
                    d.lane.as_deref(),
                    d.start_us / 1_000,
                    d.end_us.map(|us| us / 1_000),
                    d.label.as_str(),
                    d.end_label.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            bands,
            [
                (
                    Kind::Cut,
                    Some("producer0"),
                    100,
                    Some(250),
                    "cut off from node1",
                    Some("repair")
                ),
                (
                    Kind::Cut,
                    Some("node1"),
                    100,
                    Some(250),
                    "cut off from producer0",
                    Some("repair")
                ),
                (
                    Kind::Down,
                    Some("node1"),
                    200,
                    Some(300),
                    "crash, keep prefix",
                    Some("restart")
                ),
                (
                    Kind::ClockJump,
                    Some("node1"),
                    500,
                    None,
                    "clock +1.0 s",
                    None
                ),
                (
                    Kind::SlowSync,
                    Some("node1"),
                    400,
                    Some(900),
                    "slow sync, 5 ms",
                    None
                ),
            ]
        );
    }

    #[test]
    fn labels_take_the_first_free_row_and_move_right_when_crowded() {
        let mut rows = LabelRows::default();
        assert_eq!(rows.place(100.0, "abcd", true), Some((0, 100.0)));
        assert_eq!(rows.place(110.0, "abcd", true), Some((1, 110.0)));
        assert_eq!(rows.place(120.0, "abcd", true), Some((2, 120.0)));
        // All three rows are taken at 125: an end label is left out, a
        // fault's own label moves to where row 0 frees.
        assert_eq!(rows.place(125.0, "x", false), None);
        let frees = 100.0 + 4.0 * CHAR_PX + 8.0;
        assert_eq!(rows.place(125.0, "x", true), Some((0, frees)));
        assert_eq!(rows.place(500.0, "y", false), Some((0, 500.0)));
    }
}
