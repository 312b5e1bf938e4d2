//! A timeline of one run as a self-contained HTML page with an SVG: a lane
//! per process, each operation a bar from invoke to complete (green ok,
//! red failed, grey unknown), each fault a red line across all lanes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::{Entry, Operation, Outcome};

const LANE_PX: f64 = 28.0;
const LEFT_PX: f64 = 110.0;
const WIDTH_PX: f64 = 1400.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(title: &str, entries: &[Entry]) -> String {
    let mut lanes: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.process != "nemesis") {
        let next = lanes.len();
        lanes.entry(entry.process.as_str()).or_insert(next);
    }
    let end_us = entries
        .iter()
        .map(|e| e.complete_us.unwrap_or(e.invoke_us))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |us: u128| LEFT_PX + (us as f64 / end_us) * (WIDTH_PX - LEFT_PX - 10.0);
    let height = (lanes.len() as f64 + 2.0) * LANE_PX;
    let mut svg = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH_PX}' height='{height}' font-family='monospace' font-size='11'>");
    for (name, lane) in &lanes {
        let y = (*lane as f64 + 1.0) * LANE_PX;
        let _ = write!(svg, "<text x='4' y='{}'>{}</text><line x1='{LEFT_PX}' x2='{WIDTH_PX}' y1='{y}' y2='{y}' stroke='#ddd'/>", y + 4.0, escape(name));
    }
    for entry in entries {
        let label = escape(&format!("{:?} {:?}", entry.outcome, entry.operation));
        match &entry.operation {
            Operation::Fault { description } => {
                let at = x(entry.invoke_us);
                let _ = write!(svg, "<line x1='{at}' x2='{at}' y1='4' y2='{height}' stroke='#c00' stroke-width='1.5'><title>{} s: {}</title></line>", entry.invoke_us as f64 / 1e6, escape(description));
            }
            _ => {
                let y = (lanes[entry.process.as_str()] as f64 + 1.0) * LANE_PX - 6.0;
                let (start, end) = (
                    x(entry.invoke_us),
                    x(entry.complete_us.unwrap_or(end_us as u128)),
                );
                let color = match entry.outcome {
                    Outcome::Ok => "#2a2",
                    Outcome::Failed(_) => "#d33",
                    Outcome::Unknown => "#999",
                };
                let _ = write!(svg, "<rect x='{start}' y='{y}' width='{}' height='12' fill='{color}' opacity='0.5'><title>{label}</title></rect>", (end - start).max(1.0));
            }
        }
    }
    svg.push_str("</svg>");
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>{t}</title></head><body><h3>{t}</h3><p>Simulated time runs left to right ({:.3} s). Hover a bar or a red fault line for details.</p>{svg}</body></html>\n",
        end_us / 1e6,
        t = escape(title)
    )
}
