//! The run's trace: every tracing event of the nodes, the clients and the
//! harness, stamped with simulated time, kept in memory and hashed.
//!
//! Two runs of one seed must produce the same lines and so the same hash;
//! the determinism test compares hashes, and a replay writes the lines out.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The collected lines; clones share them.
#[derive(Clone, Default)]
pub struct Trace {
    lines: Arc<Mutex<Vec<String>>>,
    /// Keep the lines (replay) or only hash them (sweeps).
    keep: bool,
    hash: Arc<Mutex<u64>>,
    /// Also print each line to stderr as it happens (`SLUICE_TRACE=1`), to
    /// watch a run that hangs.
    echo: bool,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a, chosen because it is tiny and stable across platforms and releases.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ *b as u64).wrapping_mul(FNV_PRIME))
}

impl Trace {
    pub fn new(keep: bool) -> Trace {
        Trace {
            lines: Arc::default(),
            keep,
            hash: Arc::new(Mutex::new(FNV_OFFSET)),
            echo: std::env::var_os("SLUICE_TRACE").is_some_and(|v| v == "1"),
        }
    }

    /// Records one line at simulated time `elapsed_us`.
    pub fn record(&self, elapsed_us: u128, line: &str) {
        let stamped = format!(
            "{:>6}.{:06} {line}",
            elapsed_us / 1_000_000,
            elapsed_us % 1_000_000
        );
        let mut hash = self.hash.lock().unwrap_or_else(|p| p.into_inner());
        *hash = fnv1a(*hash, stamped.as_bytes());
        *hash = fnv1a(*hash, b"\n");
        if self.echo {
            eprintln!("{stamped}");
        }
        if self.keep {
            self.lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(stamped);
        }
    }

    pub fn hash(&self) -> u64 {
        *self.hash.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One line of a trace, taken apart: what `Trace::record` stamped and what
/// `TraceLayer` wrote (`FAULT` is the level of the nemesis's lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub at_us: u128,
    pub level: &'a str,
    /// The host whose span the event ran in (`node1`, `producer0`, ...), or
    /// `harness` outside every host.
    pub host: &'a str,
    /// The rest: `target: message key=value ...`.
    pub text: &'a str,
}

impl<'a> Line<'a> {
    /// Takes a stamped line apart; `None` when it is not one.
    pub fn parse(line: &'a str) -> Option<Line<'a>> {
        let line = line.trim_start();
        let (stamp, rest) = line.split_once(' ')?;
        let (seconds, micros) = stamp.split_once('.')?;
        if micros.len() != 6 {
            return None;
        }
        let at_us = seconds.parse::<u128>().ok()? * 1_000_000 + micros.parse::<u128>().ok()?;
        let rest = rest.trim_start();
        let (level, rest) = rest.split_once(' ')?;
        let rest = rest.trim_start();
        let (host, text) = rest.split_once(' ')?;
        Some(Line {
            at_us,
            level,
            host,
            text: text.trim_start(),
        })
    }

    /// The event's message without its target and its `key=value` fields.
    pub fn message(&self) -> &'a str {
        let text = self.text.split_once(": ").map_or(self.text, |(_, m)| m);
        let mut end = 0;
        for word in text.split(' ').take_while(|word| !word.contains('=')) {
            end += word.len() + 1;
        }
        text[..end.min(text.len())].trim_end()
    }
}

/// A tracing layer feeding a `Trace`, with turmoil's simulated clock.
pub struct TraceLayer {
    pub trace: Trace,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// The `host` field of a span, kept in the span's extensions.
struct HostName(String);

struct HostField(Option<String>);

impl Visit for HostField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "host" {
            self.0 = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "host" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S> Layer<S> for TraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        let mut host = HostField(None);
        attributes.record(&mut host);
        if let (Some(name), Some(span)) = (host.0, context.span(id)) {
            span.extensions_mut().insert(HostName(name));
        }
    }

    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let metadata = event.metadata();
        // turmoil's own step-by-step tracing is noise here.
        if metadata.target().starts_with("turmoil") {
            return;
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let host = context
            .event_scope(event)
            .and_then(|scope| {
                scope
                    .from_root()
                    .find_map(|span| span.extensions().get::<HostName>().map(|h| h.0.clone()))
            })
            .unwrap_or_else(|| "harness".to_string());
        let elapsed_us = turmoil::sim_elapsed().map_or(0, |d| d.as_micros());
        let line = format!(
            "{:<5} {host:<12} {}:{}",
            metadata.level(),
            metadata.target(),
            fields.0
        );
        self.trace.record(elapsed_us, &line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_line_parses_back() {
        let trace = Trace::new(true);
        trace.record(
            12_345_678,
            &format!(
                "{:<5} {:<12} {}",
                "WARN",
                "node1",
                "sluice_core::log: truncating a torn tail dir=events-0 cut_bytes=203"
            ),
        );
        trace.record(
            7,
            "FAULT harness      nemesis: crash node2, unsynced writes: KeepPrefix",
        );
        let lines = trace.lines();
        let warn = Line::parse(&lines[0]).expect("a trace line");
        assert_eq!(warn.at_us, 12_345_678);
        assert_eq!((warn.level, warn.host), ("WARN", "node1"));
        assert_eq!(warn.message(), "truncating a torn tail");
        let fault = Line::parse(&lines[1]).expect("a trace line");
        assert_eq!(
            (fault.at_us, fault.level, fault.host),
            (7, "FAULT", "harness")
        );
        assert_eq!(fault.message(), "crash node2, unsynced writes: KeepPrefix");
        assert_eq!(Line::parse("not a trace line"), None);
        assert_eq!(Line::parse(""), None);
    }
}
