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
