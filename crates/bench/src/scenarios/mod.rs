//! One module per scenario; each takes its `Args` and the server options
//! and returns a [`crate::stats::Report`].

pub(crate) mod catchup;
pub(crate) mod churn;
pub(crate) mod connections;
pub(crate) mod direct;
pub(crate) mod echo;
pub(crate) mod group;

/// CPU seconds (user + system) this process has used so far.
pub(crate) fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU used between two readings over `secs` of wall time, in cores.
pub(crate) fn cores(before: Option<f64>, after: Option<f64>, secs: f64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if secs > 0.0 => Some(crate::stats::round3((a - b) / secs)),
        _ => None,
    }
}
