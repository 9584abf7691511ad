//! The server under test: one this tool starts (a `pigeon serve` child on
//! free loopback ports, a temporary data directory, cheap password hashes,
//! no rate limits) or one already running (`--server`). Reads its
//! Prometheus `/metrics` and, given its process id, its resident memory.

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Cheap Argon2 parameters and no rate limits: the benchmarks register and
/// log in thousands of users from one address, which the defaults (rightly)
/// make slow. The connection cap is raised to what this machine's 20,000
/// file descriptors per process allow.
const GENERATED_CONFIG: &str = "\
password_hash_memory_kib = 8
password_hash_iterations = 1
user_requests_per_sec = 0
ip_connections_per_sec = 0
ip_logins_per_sec = 0
connections_max = 19000
";

/// How long a started server has to listen on both ports.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server under test comes from (the command line's global options).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) server: Option<String>,
    pub(crate) http: Option<String>,
    pub(crate) server_pid: Option<u32>,
    pub(crate) pigeon: Option<PathBuf>,
    pub(crate) set: Vec<String>,
}

/// The server under test.
pub(crate) struct Target {
    /// `tcp://host:port`.
    pub(crate) tcp_url: String,
    /// `host:port` of the HTTP port, if known.
    pub(crate) http: Option<String>,
    /// The server's process id, if known (for resident memory).
    pub(crate) pid: Option<u32>,
    /// Set when this tool started the server.
    own: Option<Own>,
}

struct Own {
    child: Child,
    binary: PathBuf,
    dir: tempfile::TempDir,
}

impl Target {
    /// Starts a server, or describes the running one the options name.
    pub(crate) async fn open(options: &Options) -> anyhow::Result<Target> {
        if let Some(url) = &options.server {
            if !url.starts_with("tcp://") {
                bail!("--server takes the protocol URL, tcp://host:port");
            }
            return Ok(Target {
                tcp_url: url.clone(),
                http: options.http.clone(),
                pid: options.server_pid,
                own: None,
            });
        }
        let binary = match &options.pigeon {
            Some(p) => p.clone(),
            None => {
                let me = std::env::current_exe().context("locating pigeon-bench")?;
                me.with_file_name("pigeon")
            }
        };
        if !binary.exists() {
            bail!(
                "no pigeon binary at {} (build it with `cargo build --release -p pigeon-server --bin pigeon` \
                 into the same target directory, or pass --pigeon PATH or --server URL)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("pigeon-bench-").tempdir()?;
        let tcp = format!("127.0.0.1:{}", free_port()?);
        let http = format!("127.0.0.1:{}", free_port()?);
        let mut config = format!(
            "listen = \"{tcp}\"\nhttp = \"{http}\"\ndata = \"{}\"\n{GENERATED_CONFIG}",
            dir.path().join("data").display()
        );
        for line in &options.set {
            let Some((key, value)) = line.split_once('=') else {
                bail!("--set takes KEY=VALUE, got {line:?}");
            };
            let key = key.trim();
            // A key given here replaces the generated one (TOML refuses duplicates).
            config = config
                .lines()
                .filter(|l| l.split('=').next().map(str::trim) != Some(key))
                .map(|l| format!("{l}\n"))
                .collect();
            config.push_str(&format!("{key} = {}\n", value.trim()));
        }
        let config_path = dir.path().join("pigeon.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let child = Command::new(&binary)
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut target = Target {
            tcp_url: format!("tcp://{tcp}"),
            http: Some(http.clone()),
            pid: Some(child.id()),
            own: Some(Own { child, binary, dir }),
        };
        target.wait_ready(&tcp, &http).await?;
        Ok(target)
    }

    async fn wait_ready(&mut self, tcp: &str, http: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(tcp).await.is_ok()
                && tokio::net::TcpStream::connect(http).await.is_ok()
            {
                return Ok(());
            }
            if let Some(own) = &mut self.own
                && let Some(status) = own.child.try_wait()?
            {
                bail!("pigeon exited early with {status}:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("pigeon did not start listening:\n{}", self.log_tail())
    }

    /// The last lines of a started server's log (empty for `--server`).
    pub(crate) fn log_tail(&self) -> String {
        let Some(own) = &self.own else {
            return String::new();
        };
        let log = std::fs::read_to_string(own.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// What the server can tell about a failed run: whether its process
    /// is still running, connections it closed as slow consumers, and the
    /// end of its log.
    pub(crate) async fn diagnosis(&self) -> String {
        let mut parts = Vec::new();
        if let Some(own) = &self.own {
            // An exited child not yet waited for is a zombie ('Z').
            let state = std::fs::read_to_string(format!("/proc/{}/stat", own.child.id()));
            let running = state.is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            });
            parts.push(if running {
                "the server is still running".to_string()
            } else {
                "the server has exited".to_string()
            });
        }
        if let Some(m) = self.metrics().await {
            parts.push(format!(
                "it closed {} connections for not reading fast enough (SLOW_CONSUMER)",
                m.get("pigeon_slow_consumers_total")
            ));
        }
        let tail = self.log_tail();
        if !tail.is_empty() {
            parts.push(format!("the end of its log:\n{tail}"));
        }
        if parts.is_empty() {
            return "nothing is known of the server's side (started elsewhere, no --http)".into();
        }
        parts.join("; ")
    }

    /// Stops a started server (SIGTERM, waiting for its drain) and starts it
    /// again on the same ports and data: a fresh process with the same state.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        let Some(own) = &mut self.own else {
            bail!("only a server this tool started can be restarted");
        };
        let status = Command::new("kill")
            .args(["-TERM", &own.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while own.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = own.child.kill();
                let _ = own.child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(own.dir.path().join("server.log"))?;
        own.child = Command::new(&own.binary)
            .args(["serve", "--config"])
            .arg(own.dir.path().join("pigeon.toml"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.pid = Some(own.child.id());
        let tcp = self.tcp_url.trim_start_matches("tcp://").to_string();
        let http = self.http.clone().unwrap_or_default();
        self.wait_ready(&tcp, &http).await
    }

    /// `ws://host:port/ws`, if the HTTP address is known.
    pub(crate) fn ws_url(&self) -> Option<String> {
        self.http.as_ref().map(|h| format!("ws://{h}/ws"))
    }

    /// The protocol URL for `transport` (`tcp` or `ws`).
    pub(crate) fn url(&self, transport: Transport) -> anyhow::Result<String> {
        match transport {
            Transport::Tcp => Ok(self.tcp_url.clone()),
            Transport::Ws => self
                .ws_url()
                .context("WebSocket needs the server's HTTP address (--http)"),
        }
    }

    /// Whether this tool started the server (and its users are fresh).
    pub(crate) fn is_own(&self) -> bool {
        self.own.is_some()
    }

    /// Bytes the server has caused to be written to storage so far
    /// (`write_bytes` of /proc/PID/io: journal, flushes and compactions).
    pub(crate) fn storage_write_bytes(&self) -> Option<u64> {
        let pid = self.pid?;
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
        io.lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The server's resident memory in KiB (`VmRSS` of /proc/PID/status).
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        let pid = self.pid?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Per thread name: nanoseconds on a CPU and waiting for one (run
    /// queue), summed over the server's threads of that name (from
    /// /proc/PID/task/*/schedstat).
    pub(crate) fn thread_times(&self) -> Option<HashMap<String, (u64, u64)>> {
        let pid = self.pid?;
        let mut out: HashMap<String, (u64, u64)> = HashMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let path = task.path();
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(path.join("comm")),
                std::fs::read_to_string(path.join("schedstat")),
            ) else {
                continue;
            };
            let mut f = stat
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            let (run, wait) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
            let e = out.entry(comm.trim().to_string()).or_default();
            e.0 += run;
            e.1 += wait;
        }
        Some(out)
    }

    /// The server's CPU time so far (user + system), from /proc/PID/stat.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        let pid = self.pid?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = f.get(11)?.parse().ok()?;
        let stime: f64 = f.get(12)?.parse().ok()?;
        Some((utime + stime) / 100.0)
    }

    /// The server's `/metrics`, summed over labels per series name; `None`
    /// when the HTTP address is unknown or the request fails.
    pub(crate) async fn metrics(&self) -> Option<Metrics> {
        let http = self.http.as_ref()?;
        let text = http_get(http, "/metrics").await.ok()?;
        Some(Metrics::parse(&text))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(own) = &mut self.own {
            let _ = own.child.kill();
            let _ = own.child.wait();
        }
    }
}

/// Which protocol transport a scenario uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// Length-prefixed frames over TCP.
    Tcp,
    /// WebSocket on the HTTP port.
    Ws,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Ws => "ws",
        })
    }
}

/// A scrape of Prometheus text: values by name summed over labels, and
/// each labelled series as it is.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    by_name: HashMap<String, f64>,
    series: HashMap<String, f64>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let series = series.trim();
            let name = series.split('{').next().unwrap_or(series);
            if let Ok(v) = value.trim().parse::<f64>() {
                *m.by_name.entry(name.to_string()).or_insert(0.0) += v;
                m.series.insert(series.to_string(), v);
            }
        }
        m
    }

    /// A series' value summed over its labels (0 when absent).
    pub(crate) fn get(&self, name: &str) -> f64 {
        self.by_name.get(name).copied().unwrap_or(0.0)
    }

    /// The upper bound (seconds) of the histogram bucket holding quantile
    /// `q` of what `name_bucket{<labels>,le=...}` counted between `before`
    /// and `self`; `labels` is the text before `le`, e.g. `type="send",`.
    /// `None` without samples; infinity when it is past the last bound.
    pub(crate) fn bucket_quantile(
        &self,
        before: &Metrics,
        name: &str,
        labels: &str,
        q: f64,
    ) -> Option<f64> {
        let prefix = format!("{name}_bucket{{{labels}le=\"");
        let mut buckets: Vec<(f64, f64)> = self
            .series
            .iter()
            .filter_map(|(series, &after)| {
                let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                let was = before.series.get(series).copied().unwrap_or(0.0);
                Some((bound, after - was))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= q * total)
            .map(|(bound, _)| *bound)
    }
}

/// Group-commit figures between two scrapes.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct CommitDelta {
    /// Group commits (each one fsync).
    pub(crate) commits: f64,
    /// Write jobs committed.
    pub(crate) jobs: f64,
    /// Jobs per commit: the average fsync batch.
    pub(crate) jobs_per_commit: f64,
    /// Milliseconds per commit spent applying the batch and fsyncing it
    /// (the rest of the committer's cycle runs the jobs or waits for them).
    pub(crate) apply_and_fsync_ms: f64,
}

impl CommitDelta {
    pub(crate) fn between(before: &Metrics, after: &Metrics) -> CommitDelta {
        let commits = after.get("pigeon_store_commit_jobs_count")
            - before.get("pigeon_store_commit_jobs_count");
        let jobs =
            after.get("pigeon_store_commit_jobs_sum") - before.get("pigeon_store_commit_jobs_sum");
        let seconds = after.get("pigeon_store_commit_seconds_sum")
            - before.get("pigeon_store_commit_seconds_sum");
        CommitDelta {
            commits,
            jobs,
            jobs_per_commit: if commits > 0.0 { jobs / commits } else { 0.0 },
            apply_and_fsync_ms: if commits > 0.0 {
                seconds * 1000.0 / commits
            } else {
                0.0
            },
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A plain HTTP/1.1 GET; the body of a 200 answer.
async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("an HTTP answer without a header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks labelled series are summed under their name and comments skipped.
    #[test]
    fn metrics_sum_over_labels() {
        let m = Metrics::parse(
            "# TYPE x counter\nx{a=\"1\"} 2\nx{a=\"2\"} 3.5\npigeon_store_commit_jobs_sum 10\n",
        );
        assert_eq!(m.get("x"), 5.5);
        assert_eq!(m.get("pigeon_store_commit_jobs_sum"), 10.0);
        assert_eq!(m.get("absent"), 0.0);
    }

    /// Checks bucket quantiles over the difference of two scrapes.
    #[test]
    fn bucket_quantiles_between_scrapes() {
        let before = Metrics::parse(
            "d_bucket{type=\"send\",le=\"0.001\"} 10\nd_bucket{type=\"send\",le=\"0.01\"} 10\nd_bucket{type=\"send\",le=\"+Inf\"} 10\n",
        );
        let after = Metrics::parse(
            "d_bucket{type=\"send\",le=\"0.001\"} 60\nd_bucket{type=\"send\",le=\"0.01\"} 109\nd_bucket{type=\"send\",le=\"+Inf\"} 110\n",
        );
        let q = |q| after.bucket_quantile(&before, "d", "type=\"send\",", q);
        assert_eq!(q(0.5), Some(0.001));
        assert_eq!(q(0.99), Some(0.01));
        assert_eq!(q(1.0), Some(f64::INFINITY));
        assert_eq!(
            after.bucket_quantile(&after, "d", "type=\"send\",", 0.5),
            None
        );
    }
}
