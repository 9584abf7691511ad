//! Latency histograms (HDR, microseconds), progress bars and the report
//! every scenario returns.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

/// Latencies from 1 µs to an hour at 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records `d` in microseconds (clamped into the histogram's range).
pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, h.high());
    h.saturating_record(us);
}

/// Milliseconds at quantile `q` of a microsecond histogram.
pub(crate) fn ms_at(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// The usual percentiles of a microsecond histogram, in milliseconds.
pub(crate) fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "mean_ms": round3(h.mean() / 1000.0),
        "p50_ms": ms_at(h, 0.5),
        "p99_ms": ms_at(h, 0.99),
        "p999_ms": ms_at(h, 0.999),
        "max_ms": h.max() as f64 / 1000.0,
    })
}

/// One line: `p50 1.23 ms, p99 4.56 ms, p99.9 7.89 ms, max 9.99 ms (n=...)`.
pub(crate) fn line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (n={})",
        ms_at(h, 0.5),
        ms_at(h, 0.99),
        ms_at(h, 0.999),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>22} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// Latency over the course of a run: for each `TIMELINE_SLOT` of send time,
/// how many messages were sent in it and the slowest one's latency. A tail
/// made of a few stalls (every message of some slots late) and one spread
/// over the run (a few late messages everywhere) give the same percentiles;
/// this tells them apart.
#[derive(Default, Clone)]
pub(crate) struct Timeline {
    /// Per slot: (messages, slowest latency in µs).
    slots: Vec<(u32, u32)>,
}

/// The width of one timeline slot.
pub(crate) const TIMELINE_SLOT: Duration = Duration::from_millis(10);
/// Sends later than this after the start are not put on the timeline (its
/// memory stays bounded on long runs; 8 bytes per slot, 2.9 MB per hour).
const TIMELINE_MAX: Duration = Duration::from_secs(3600);

impl Timeline {
    /// A message sent `sent` after the start that took `latency`.
    pub(crate) fn record(&mut self, sent: Duration, latency: Duration) {
        if sent >= TIMELINE_MAX {
            return;
        }
        let i = (sent.as_micros() / TIMELINE_SLOT.as_micros()) as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, (0, 0));
        }
        let us = latency.as_micros().min(u32::MAX as u128) as u32;
        let slot = &mut self.slots[i];
        slot.0 += 1;
        slot.1 = slot.1.max(us);
    }

    pub(crate) fn add(&mut self, other: &Timeline) {
        if self.slots.len() < other.slots.len() {
            self.slots.resize(other.slots.len(), (0, 0));
        }
        for (a, b) in self.slots.iter_mut().zip(&other.slots) {
            a.0 += b.0;
            a.1 = a.1.max(b.1);
        }
    }

    /// How the slots with a message slower than `threshold` lie.
    pub(crate) fn late(&self, threshold: Duration) -> Late {
        let limit = threshold.as_micros().min(u32::MAX as u128) as u32;
        let mut late = Late::default();
        let mut run = 0usize;
        for (i, &(n, max)) in self.slots.iter().enumerate() {
            if n == 0 {
                continue;
            }
            late.slots += 1;
            if max > limit {
                late.late_slots += 1;
                late.messages_in_late_slots += u64::from(n);
                run += 1;
                if run > late.longest_run {
                    late.longest_run = run;
                    late.longest_run_start = i + 1 - run;
                }
            } else {
                run = 0;
            }
        }
        late
    }

    /// `slot_start_ms,messages,slowest_ms` lines, one per slot.
    pub(crate) fn csv(&self) -> String {
        let mut out = String::from("slot_start_ms,messages,slowest_ms\n");
        let w = TIMELINE_SLOT.as_millis();
        for (i, &(n, max)) in self.slots.iter().enumerate() {
            let _ = writeln!(out, "{},{n},{:.3}", i as u128 * w, f64::from(max) / 1000.0);
        }
        out
    }
}

/// What [`Timeline::late`] found.
#[derive(Default, Debug, PartialEq, Eq)]
pub(crate) struct Late {
    /// Slots in which something was sent.
    pub(crate) slots: usize,
    /// Of those, slots with a message over the threshold.
    pub(crate) late_slots: usize,
    /// Messages sent in those slots (late or not).
    pub(crate) messages_in_late_slots: u64,
    /// The longest stretch of consecutive late slots, and its first slot.
    pub(crate) longest_run: usize,
    pub(crate) longest_run_start: usize,
}

/// What a scenario measured.
pub(crate) struct Report {
    /// The scenario's name.
    pub(crate) scenario: &'static str,
    /// A title for plots.
    pub(crate) title: String,
    /// The parameters it ran with.
    pub(crate) params: Value,
    /// The measurements.
    pub(crate) results: Value,
    /// The human summary.
    pub(crate) text: String,
    /// Latency distributions to plot: (label, microsecond histogram).
    pub(crate) curves: Vec<(String, Histogram<u64>)>,
}

impl Report {
    pub(crate) fn json(&self) -> Value {
        json!({
            "scenario": self.scenario,
            "params": self.params,
            "results": self.results,
        })
    }
}

/// Builds the human summary line by line.
#[derive(Default)]
pub(crate) struct Text(String);

impl Text {
    pub(crate) fn line(&mut self, s: impl AsRef<str>) {
        let _ = writeln!(self.0, "{}", s.as_ref());
    }

    pub(crate) fn kv(&mut self, key: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "  {key:<28} {value}");
    }

    pub(crate) fn done(self) -> String {
        self.0
    }
}

/// `12,345` style thousands separators.
pub(crate) fn thousands(n: f64) -> String {
    let n = n.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks percentiles come out in milliseconds from microsecond records.
    #[test]
    fn histogram_percentiles_in_ms() {
        let mut h = histogram();
        for ms in 1..=100 {
            record(&mut h, Duration::from_millis(ms));
        }
        assert!((ms_at(&h, 0.5) - 50.0).abs() < 0.1);
        assert!((ms_at(&h, 0.99) - 99.0).abs() < 0.1);
        assert_eq!(summary(&h)["count"], 100);
    }

    /// Checks the timeline finds late slots and the longest stretch of them.
    #[test]
    fn timeline_finds_stalls() {
        let ms = Duration::from_millis;
        let mut a = Timeline::default();
        let mut b = Timeline::default();
        for slot in 0..10u64 {
            a.record(ms(slot * 10 + 1), ms(2));
        }
        // Slots 3, 4 and 5 late (from either side), then slot 8.
        b.record(ms(35), ms(40));
        a.record(ms(41), ms(11));
        b.record(ms(59), ms(30));
        a.record(ms(80), ms(12));
        a.add(&b);
        let late = a.late(ms(10));
        assert_eq!(
            late,
            Late {
                slots: 10,
                late_slots: 4,
                messages_in_late_slots: 8,
                longest_run: 3,
                longest_run_start: 3,
            }
        );
        let csv = a.csv();
        assert!(
            csv.starts_with("slot_start_ms,messages,slowest_ms\n0,1,2.000\n"),
            "{csv}"
        );
        assert!(csv.contains("\n30,2,40.000\n"), "{csv}");
        // Nothing past the bound is kept.
        a.record(TIMELINE_MAX, ms(1));
        assert_eq!(a.slots.len(), 10);
    }

    /// Checks the thousands separators.
    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(-1234.0), "-1,234");
    }
}
