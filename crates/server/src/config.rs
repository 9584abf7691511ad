//! The server's configuration: a TOML file, overridden per key by
//! environment variables `PIGEON_<KEY>` (upper case), overridden by
//! command-line flags. Every key has a safe default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use pigeon_core::CoreConfig;
use pigeon_gateway::GatewayConfig;
use pigeon_proto::limits::{FRAME_BYTES_MAX_CEILING, FRAME_OVERHEAD_BYTES_MAX};
use pigeon_store::StoreConfig;
use serde::{Deserialize, Serialize};

/// The most runtime threads `runtime_threads` may ask for.
pub(crate) const RUNTIME_THREADS_MAX: usize = 1024;

/// Every setting of `pigeon serve`. See the README for each key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// TCP listener for the binary protocol.
    pub(crate) listen: String,
    /// HTTP listener: `/ws`, `/healthz`, `/readyz`, `/metrics`, the web app.
    pub(crate) http: String,
    /// PEM certificate chain (leaf first) for TLS on both listeners; empty
    /// (with `tls_key` empty) for plain TCP and HTTP.
    pub(crate) tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub(crate) tls_key: PathBuf,
    /// Data directory of the embedded store.
    pub(crate) data: PathBuf,
    /// Where the data lives: empty for the embedded store in `data`, or a
    /// PostgreSQL URL (`postgres://user:password@host:port/db`) for cluster
    /// mode, where every node uses the same database.
    pub(crate) store: StoreUrl,
    /// Connections to PostgreSQL per node (ignored by the embedded store).
    pub(crate) store_pool_size: usize,
    /// Committed log marks, and committed conversation heads, the embedded
    /// store keeps in memory for readers (each); past it they are emptied
    /// and load again from disk.
    pub(crate) store_heads_cached_max: usize,
    /// MiB of journal the embedded store keeps before it flushes the tables
    /// with data in its oldest file: more smooths latency under load, less
    /// shortens the replay after a crash.
    pub(crate) store_journal_mib: u64,
    /// Whether anyone may register.
    pub(crate) open_registration: bool,
    /// Session lifetime after login.
    pub(crate) session_ttl_secs: u64,
    /// Largest frame in either direction.
    pub(crate) frame_bytes_max: usize,
    /// Largest message content.
    pub(crate) message_bytes_max: usize,
    /// Time to send the Hello.
    pub(crate) handshake_timeout_ms: u64,
    /// Advised client ping interval.
    pub(crate) heartbeat_interval_ms: u64,
    /// Silence before a connection is closed.
    pub(crate) idle_timeout_ms: u64,
    /// Frames queued per connection before it counts as a slow reader.
    pub(crate) outbound_queue_frames_max: usize,
    /// Requests in flight per connection.
    pub(crate) inflight_requests_max: usize,
    /// Events per sync answer.
    pub(crate) sync_batch_events_max: u32,
    /// Messages per history page.
    pub(crate) history_page_max: u32,
    /// Events kept per user log; older keys must resync. 0 keeps all.
    pub(crate) sync_log_retain_events: u64,
    /// Open connections per process.
    pub(crate) connections_max: usize,
    /// Connections the kernel may hold per listening port before the
    /// server accepts them (capped by `net.core.somaxconn`).
    pub(crate) listen_backlog: u32,
    /// Threads of the async runtime that runs connections and requests;
    /// 0: one per core, less one for the embedded store's committer.
    pub(crate) runtime_threads: usize,
    /// Seconds to let connections finish on SIGTERM.
    pub(crate) shutdown_grace_secs: u64,
    /// Log format on stderr: "text" or "json".
    pub(crate) log_format: String,
    /// Groups above this many members are read-diffused.
    pub(crate) group_large_threshold: u32,
    /// The most members a group may have.
    pub(crate) group_members_max: u32,
    /// How long the sender may recall a message.
    pub(crate) recall_window_secs: u64,
    /// How long the sender may edit a message.
    pub(crate) edit_window_secs: u64,
    /// Shortest interval between typing pushes per user and conversation.
    pub(crate) typing_throttle_ms: u64,
    /// How long delivery receipts are gathered before they are recorded.
    pub(crate) delivery_receipt_delay_ms: u64,
    /// Argon2id memory of new password hashes, KiB (lower only for tests).
    pub(crate) password_hash_memory_kib: u32,
    /// Argon2id passes of new password hashes.
    pub(crate) password_hash_iterations: u32,
    /// Client-facing protocol URLs listed by `GET /v1/endpoints` (empty:
    /// derived from the request's host and the listen ports).
    pub(crate) advertise_endpoints: Vec<String>,
    /// Where clients of a draining server are told to reconnect (empty:
    /// anywhere, e.g. the same address once restarted).
    pub(crate) drain_redirect_to: Vec<String>,
    /// Draining clients wait a random time up to this before reconnecting.
    pub(crate) drain_reconnect_spread_ms: u64,
    /// NATS URL of the cluster bus (`nats://host:4222`); empty runs one
    /// node on its own.
    pub(crate) bus: String,
    /// This node's id in the cluster; empty: random at each start.
    pub(crate) node_id: String,
    /// Prefix of the bus subjects (several clusters may share one NATS).
    pub(crate) bus_subject_prefix: String,
    /// Messages queued for the bus before new ones are dropped.
    pub(crate) bus_queue_max: usize,
    /// How often a node tells the others it is alive, ms.
    pub(crate) cluster_beat_ms: u64,
    /// Silence after which a node counts as gone, ms.
    pub(crate) cluster_node_timeout_ms: u64,
    /// How often a node republishes the list of its connected users, s.
    pub(crate) cluster_snapshot_secs: u64,
    /// Average answer time of writes above which low and then normal
    /// priority requests are refused with BUSY.
    pub(crate) overload_latency_ms: u64,
    /// Sustained requests per second per user (0: unlimited).
    pub(crate) user_requests_per_sec: u32,
    /// Requests per user in a burst.
    pub(crate) user_requests_burst: u32,
    /// Sustained new connections per second per IP address (0: unlimited).
    pub(crate) ip_connections_per_sec: u32,
    /// New connections per IP address in a burst.
    pub(crate) ip_connections_burst: u32,
    /// Sustained login and register attempts per second per IP address (0: unlimited).
    pub(crate) ip_logins_per_sec: u32,
    /// Login and register attempts per IP address in a burst.
    pub(crate) ip_logins_burst: u32,
    /// Webhook endpoints: `[[webhooks]]` tables with `url`, `secret` and
    /// `events` (`message.created`, `push.needed`).
    pub(crate) webhooks: Vec<crate::webhooks::Endpoint>,
    /// Attempts per webhook delivery before it is recorded as failed.
    pub(crate) webhook_attempts_max: u32,
    /// First retry delay of a failed delivery (doubling, with jitter).
    pub(crate) webhook_backoff_initial_ms: u64,
    /// Longest retry delay.
    pub(crate) webhook_backoff_max_ms: u64,
    /// Time an endpoint has to answer.
    pub(crate) webhook_timeout_ms: u64,
    /// Whether the HTTP port serves the web chat app at `/`.
    pub(crate) web_app: bool,
    /// Bearer token of the admin HTTP API (`/admin/`); empty refuses every
    /// admin request.
    pub(crate) admin_token: Secret,
}

/// A setting that must not appear in logs or debug output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "(none)" } else { "(set)" })
    }
}

/// The `store` setting: a database URL whose password must not appear in
/// logs or debug output.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct StoreUrl(pub(crate) String);

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::backend::redact(&self.0))
    }
}

/// The shortest admin token accepted, so a guessable one is refused.
pub(crate) const ADMIN_TOKEN_BYTES_MIN: usize = 16;

/// The largest `store_journal_mib` accepted: a start after a crash replays
/// up to this much journal (about 15 MB a second of replay on 2 cores, so
/// at most a few minutes).
pub(crate) const STORE_JOURNAL_MIB_CEILING: u64 = 4096;

impl Default for Config {
    fn default() -> Self {
        let gw = GatewayConfig::default();
        let core = CoreConfig::default();
        Config {
            listen: "0.0.0.0:7700".into(),
            http: "0.0.0.0:7780".into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            data: PathBuf::from("pigeon-data"),
            store: StoreUrl::default(),
            store_pool_size: pigeon_store_pg::PgConfig::default().pool_size,
            store_heads_cached_max: StoreConfig::default().heads_cached_max,
            store_journal_mib: StoreConfig::default().journal_bytes_max >> 20,
            open_registration: core.open_registration,
            session_ttl_secs: (core.session_ttl_ms / 1000) as u64,
            frame_bytes_max: gw.frame_bytes_max,
            message_bytes_max: core.message_bytes_max,
            handshake_timeout_ms: gw.handshake_timeout.as_millis() as u64,
            heartbeat_interval_ms: gw.heartbeat_interval.as_millis() as u64,
            idle_timeout_ms: gw.idle_timeout.as_millis() as u64,
            outbound_queue_frames_max: gw.outbound_queue_frames_max,
            inflight_requests_max: gw.inflight_requests_max,
            sync_batch_events_max: core.sync_batch_events_max,
            history_page_max: core.history_page_max,
            sync_log_retain_events: StoreConfig::default().log_retain_events,
            connections_max: gw.connections_max,
            listen_backlog: 4096,
            runtime_threads: 0,
            shutdown_grace_secs: 10,
            log_format: "text".into(),
            group_large_threshold: core.group_large_threshold,
            group_members_max: core.group_members_max,
            recall_window_secs: (core.recall_window_ms / 1000) as u64,
            edit_window_secs: (core.edit_window_ms / 1000) as u64,
            typing_throttle_ms: core.typing_throttle_ms as u64,
            delivery_receipt_delay_ms: core.delivery_receipt_delay_ms,
            password_hash_memory_kib: core.password_hash_cost.memory_kib,
            password_hash_iterations: core.password_hash_cost.iterations,
            advertise_endpoints: Vec::new(),
            drain_redirect_to: Vec::new(),
            drain_reconnect_spread_ms: gw.drain_reconnect_spread.as_millis() as u64,
            bus: String::new(),
            node_id: String::new(),
            bus_subject_prefix: "pigeon".into(),
            bus_queue_max: 65_536,
            cluster_beat_ms: 1000,
            cluster_node_timeout_ms: 5000,
            cluster_snapshot_secs: 30,
            overload_latency_ms: gw.admission.overload_latency.as_millis() as u64,
            user_requests_per_sec: gw.admission.user_requests_per_sec,
            user_requests_burst: gw.admission.user_requests_burst,
            ip_connections_per_sec: gw.admission.ip_connections_per_sec,
            ip_connections_burst: gw.admission.ip_connections_burst,
            ip_logins_per_sec: gw.admission.ip_logins_per_sec,
            ip_logins_burst: gw.admission.ip_logins_burst,
            webhooks: Vec::new(),
            webhook_attempts_max: 12,
            webhook_backoff_initial_ms: 1000,
            webhook_backoff_max_ms: 3_600_000,
            webhook_timeout_ms: 10_000,
            web_app: true,
            admin_token: Secret::default(),
        }
    }
}

impl Config {
    /// Loads `file` (if given), then applies `PIGEON_<KEY>` variables from
    /// `env`, then checks the result.
    pub(crate) fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let keys = toml::Table::try_from(Config::default()).expect("the default config serialises");
        for (key, default) in keys {
            let var = format!("PIGEON_{}", key.to_uppercase());
            if let Some(raw) = env(&var) {
                let value = match default {
                    toml::Value::Integer(_) => toml::Value::Integer(
                        raw.trim()
                            .parse()
                            .with_context(|| format!("{var} must be an integer, got {raw:?}"))?,
                    ),
                    toml::Value::Boolean(_) => toml::Value::Boolean(
                        raw.trim()
                            .parse()
                            .with_context(|| format!("{var} must be true or false, got {raw:?}"))?,
                    ),
                    // Lists: a TOML array (`[{url = "..."}]`) or comma-separated.
                    toml::Value::Array(_) if raw.trim_start().starts_with('[') => {
                        let parsed: toml::Table = format!("v = {raw}")
                            .parse()
                            .with_context(|| format!("{var} must be a TOML array, got {raw:?}"))?;
                        parsed["v"].clone()
                    }
                    toml::Value::Array(_) => toml::Value::Array(
                        raw.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(|s| toml::Value::String(s.to_string()))
                            .collect(),
                    ),
                    _ => toml::Value::String(raw),
                };
                table.insert(key, value);
            }
        }
        let config: Config = table.try_into().context("invalid configuration")?;
        config.check()?;
        Ok(config)
    }

    /// The runtime's worker threads on a machine with `cores` CPUs:
    /// `runtime_threads`, or with 0, one per core, less the one the
    /// embedded store's committer keeps busy (its group commits run on a
    /// thread of their own), and never fewer than one. On 2 cores one
    /// runtime thread beside the committer took less CPU per message and
    /// had a lower p99 than two (BENCHMARKS.md, session of 2026-11-25).
    /// With PostgreSQL commits run on the runtime: one per core.
    pub(crate) fn runtime_workers(&self, cores: usize) -> usize {
        match self.runtime_threads {
            0 if self.store.0.is_empty() => cores.saturating_sub(1).max(1),
            0 => cores.max(1),
            n => n,
        }
    }

    /// Refuses settings that cannot work together.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if self.runtime_threads > RUNTIME_THREADS_MAX {
            bail!("runtime_threads may be at most {RUNTIME_THREADS_MAX} (0 picks one per core)");
        }
        if self.frame_bytes_max > FRAME_BYTES_MAX_CEILING {
            bail!("frame_bytes_max may be at most {FRAME_BYTES_MAX_CEILING}");
        }
        if self.message_bytes_max == 0
            || self.message_bytes_max + FRAME_OVERHEAD_BYTES_MAX > self.frame_bytes_max
        {
            bail!(
                "message_bytes_max ({}) plus {FRAME_OVERHEAD_BYTES_MAX} bytes of overhead must fit in frame_bytes_max ({})",
                self.message_bytes_max,
                self.frame_bytes_max
            );
        }
        for (name, v) in [
            ("outbound_queue_frames_max", self.outbound_queue_frames_max),
            ("inflight_requests_max", self.inflight_requests_max),
            ("connections_max", self.connections_max),
            ("listen_backlog", self.listen_backlog as usize),
            ("sync_batch_events_max", self.sync_batch_events_max as usize),
            ("history_page_max", self.history_page_max as usize),
            ("store_heads_cached_max", self.store_heads_cached_max),
        ] {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
        }
        let url = &self.store.0;
        if !(url.is_empty() || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!(
                "store must be empty (the embedded store in `data`) or a postgres:// URL, got {:?}",
                crate::backend::redact(url)
            );
        }
        let journal_min = pigeon_store::embedded::JOURNAL_BYTES_MIN >> 20;
        if !(journal_min..=STORE_JOURNAL_MIB_CEILING).contains(&self.store_journal_mib) {
            bail!(
                "store_journal_mib must be from {journal_min} to {STORE_JOURNAL_MIB_CEILING}, got {}",
                self.store_journal_mib
            );
        }
        if self.store_pool_size == 0 {
            bail!("store_pool_size must be at least 1");
        }
        if !self.bus.is_empty() && url.is_empty() {
            bail!(
                "bus needs a shared store: every node of a cluster must use the same store = \"postgres://…\" (the embedded store belongs to one node)"
            );
        }
        if !(self.bus.is_empty()
            || self.bus.starts_with("nats://")
            || self.bus.starts_with("tls://"))
        {
            bail!(
                "bus must be empty (a single node) or a nats:// URL, got {:?}",
                self.bus
            );
        }
        if self.idle_timeout_ms <= self.heartbeat_interval_ms {
            bail!("idle_timeout_ms must be longer than heartbeat_interval_ms");
        }
        if self.group_members_max < 2 || self.group_large_threshold == 0 {
            bail!("group_members_max must be at least 2 and group_large_threshold at least 1");
        }
        if self.password_hash_memory_kib < 8 || self.password_hash_iterations == 0 {
            bail!(
                "password_hash_memory_kib must be at least 8 and password_hash_iterations at least 1"
            );
        }
        for w in &self.webhooks {
            if !w.url.starts_with("http://") {
                bail!(
                    "webhook url {:?}: only http:// endpoints are supported (put a TLS proxy in front)",
                    w.url
                );
            }
            if w.secret.is_empty() {
                bail!("webhook url {:?} needs a secret to sign its bodies", w.url);
            }
        }
        if self.webhook_attempts_max == 0 || self.webhook_backoff_initial_ms == 0 {
            bail!("webhook_attempts_max and webhook_backoff_initial_ms must be at least 1");
        }
        let token = &self.admin_token.0;
        if !token.is_empty()
            && (token.len() < ADMIN_TOKEN_BYTES_MIN || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            bail!(
                "admin_token must be empty (admin API off) or at least {ADMIN_TOKEN_BYTES_MIN} printable ASCII characters without spaces"
            );
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("log_format must be \"text\" or \"json\"");
        }
        let (cert, key) = (self.tls_cert.as_os_str(), self.tls_key.as_os_str());
        if cert.is_empty() != key.is_empty() {
            let (set, unset) = if cert.is_empty() {
                ("tls_key", "tls_cert")
            } else {
                ("tls_cert", "tls_key")
            };
            bail!(
                "{set} is set but {unset} is not: give both (PEM files) to serve TLS, or neither for plain TCP and HTTP"
            );
        }
        Ok(())
    }

    /// The certificate chain and key files, when TLS is on.
    pub(crate) fn tls(&self) -> Option<(&Path, &Path)> {
        (!self.tls_cert.as_os_str().is_empty()).then_some((&self.tls_cert, &self.tls_key))
    }

    /// The domain's settings.
    pub(crate) fn core(&self) -> CoreConfig {
        CoreConfig {
            open_registration: self.open_registration,
            session_ttl_ms: (self.session_ttl_secs as i64).saturating_mul(1000),
            message_bytes_max: self.message_bytes_max,
            sync_batch_events_max: self.sync_batch_events_max,
            sync_batch_bytes_max: self.frame_bytes_max / 2,
            history_page_max: self.history_page_max,
            group_large_threshold: self.group_large_threshold,
            group_members_max: self.group_members_max,
            recall_window_ms: (self.recall_window_secs as i64).saturating_mul(1000),
            edit_window_ms: (self.edit_window_secs as i64).saturating_mul(1000),
            typing_throttle_ms: self.typing_throttle_ms as i64,
            delivery_receipt_delay_ms: self.delivery_receipt_delay_ms,
            hooks: self
                .webhooks
                .iter()
                .flat_map(|w| {
                    w.events.iter().map(|&kind| pigeon_core::store::HookTarget {
                        endpoint: w.url.clone(),
                        kind,
                    })
                })
                .collect(),
            password_hash_cost: pigeon_core::accounts::HashCost {
                memory_kib: self.password_hash_memory_kib,
                iterations: self.password_hash_iterations,
            },
            ..CoreConfig::default()
        }
    }

    /// The access layer's settings.
    pub(crate) fn gateway(&self) -> GatewayConfig {
        GatewayConfig {
            frame_bytes_max: self.frame_bytes_max,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            outbound_queue_frames_max: self.outbound_queue_frames_max,
            inflight_requests_max: self.inflight_requests_max,
            connections_max: self.connections_max,
            redirect_to: self.drain_redirect_to.clone(),
            drain_reconnect_spread: Duration::from_millis(self.drain_reconnect_spread_ms),
            admission: pigeon_gateway::admission::AdmissionConfig {
                overload_latency: Duration::from_millis(self.overload_latency_ms),
                user_requests_per_sec: self.user_requests_per_sec,
                user_requests_burst: self.user_requests_burst,
                ip_connections_per_sec: self.ip_connections_per_sec,
                ip_connections_burst: self.ip_connections_burst,
                ip_logins_per_sec: self.ip_logins_per_sec,
                ip_logins_burst: self.ip_logins_burst,
            },
            ..GatewayConfig::default()
        }
    }

    /// The webhook deliverer's settings.
    pub(crate) fn webhooks(&self) -> crate::webhooks::Settings {
        crate::webhooks::Settings {
            endpoints: self.webhooks.clone(),
            attempts_max: self.webhook_attempts_max,
            backoff_initial: Duration::from_millis(self.webhook_backoff_initial_ms),
            backoff_max: Duration::from_millis(
                self.webhook_backoff_max_ms
                    .max(self.webhook_backoff_initial_ms),
            ),
            timeout: Duration::from_millis(self.webhook_timeout_ms),
        }
    }

    /// The cluster bus's settings, if one is configured; `endpoints` are
    /// this node's client-facing URLs.
    pub(crate) fn bus(&self, endpoints: Vec<String>) -> Option<pigeon_bus::BusConfig> {
        if self.bus.is_empty() {
            return None;
        }
        let node_id = if self.node_id.is_empty() {
            format!("{:016x}", rand::random::<u64>())
        } else {
            self.node_id.clone()
        };
        Some(pigeon_bus::BusConfig {
            url: self.bus.clone(),
            subject_prefix: self.bus_subject_prefix.clone(),
            node_id,
            endpoints,
            beat_interval: Duration::from_millis(self.cluster_beat_ms.max(10)),
            node_timeout: Duration::from_millis(
                self.cluster_node_timeout_ms
                    .max(2 * self.cluster_beat_ms.max(10)),
            ),
            snapshot_interval: Duration::from_secs(self.cluster_snapshot_secs.max(1)),
            queue_max: self.bus_queue_max.max(16),
            message_bytes_max: 512 * 1024,
        })
    }

    /// The PostgreSQL URL, if the store is PostgreSQL.
    pub(crate) fn store_url(&self) -> Option<&str> {
        (!self.store.0.is_empty()).then_some(self.store.0.as_str())
    }

    /// The PostgreSQL store's settings.
    pub(crate) fn pg_store(&self) -> pigeon_store_pg::PgConfig {
        pigeon_store_pg::PgConfig {
            pool_size: self.store_pool_size,
            log_retain_events: self.sync_log_retain_events,
        }
    }

    /// The embedded store's settings.
    pub(crate) fn store(&self) -> StoreConfig {
        StoreConfig {
            log_retain_events: self.sync_log_retain_events,
            heads_cached_max: self.store_heads_cached_max,
            journal_bytes_max: self.store_journal_mib << 20,
            ..StoreConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example config in deploy/ is accepted and names every key, so it
    /// cannot fall behind the code.
    #[test]
    fn example_config_lists_every_key() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/pigeon.toml");
        Config::load(Some(&path), |_| None).expect("deploy/pigeon.toml loads");
        let text = std::fs::read_to_string(&path).unwrap();
        let keys = toml::Table::try_from(Config::default()).unwrap();
        for key in keys.keys() {
            assert!(
                text.contains(&format!("{key} =")) || text.contains(&format!("[[{key}]]")),
                "deploy/pigeon.toml lacks {key}"
            );
        }
    }

    /// The runtime leaves a core to the embedded store's committer, keeps
    /// at least one thread, and takes an explicit count as given.
    #[test]
    fn runtime_threads_default_to_the_cores_less_the_committers() {
        let embedded = Config::default();
        assert_eq!(embedded.runtime_workers(2), 1);
        assert_eq!(embedded.runtime_workers(8), 7);
        assert_eq!(embedded.runtime_workers(1), 1);
        let postgres = Config {
            store: StoreUrl("postgres://pigeon@db/pigeon".into()),
            ..Config::default()
        };
        assert_eq!(postgres.runtime_workers(2), 2);
        assert_eq!(postgres.runtime_workers(1), 1);
        let set =
            |n: &'static str| move |k: &str| (k == "PIGEON_RUNTIME_THREADS").then(|| n.to_string());
        let three = Config::load(None, set("3")).unwrap();
        assert_eq!(three.runtime_workers(2), 3);
        let err = Config::load(None, set("5000")).unwrap_err();
        assert!(
            format!("{err:#}").contains("runtime_threads may be at most 1024"),
            "{err:#}"
        );
    }

    /// Checks the precedence default < file < environment, and that bad
    /// values and unknown keys are refused with a message.
    #[test]
    fn file_then_environment_then_checks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pigeon.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\nmessage_bytes_max = 1000\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "PIGEON_LISTEN" => Some("127.0.0.1:2".to_string()),
            "PIGEON_OPEN_REGISTRATION" => Some("false".to_string()),
            _ => None,
        };
        let c = Config::load(Some(&file), env).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2");
        assert_eq!(c.message_bytes_max, 1000);
        assert!(!c.open_registration);
        assert_eq!(c.http, Config::default().http);

        let bad = |k: &str| (k == "PIGEON_FRAME_BYTES_MAX").then(|| "lots".to_string());
        assert!(
            Config::load(None, bad)
                .unwrap_err()
                .to_string()
                .contains("PIGEON_FRAME_BYTES_MAX")
        );
        std::fs::write(&file, "listne = \"x\"\n").unwrap();
        assert!(
            Config::load(Some(&file), |_| None).is_err(),
            "unknown keys are refused"
        );
        let token = |k: &str| (k == "PIGEON_ADMIN_TOKEN").then(|| "s3cret-admin-token".to_string());
        assert_eq!(
            Config::load(None, token).unwrap().admin_token.0,
            "s3cret-admin-token"
        );
        assert_eq!(
            format!("{:?}", Config::load(None, token).unwrap())
                .matches("s3cret")
                .count(),
            0
        );
        let short = |k: &str| (k == "PIGEON_ADMIN_TOKEN").then(|| "short".to_string());
        assert!(Config::load(None, short).is_err(), "guessable admin token");
        std::fs::write(&file, "message_bytes_max = 2000000\n").unwrap();
        assert!(
            Config::load(Some(&file), |_| None).is_err(),
            "message larger than a frame"
        );
    }

    /// The bound on the store's cached positions reaches the store, and 0
    /// is refused with the key's name.
    #[test]
    fn heads_cached_max_reaches_the_store() {
        assert_eq!(Config::default().store().heads_cached_max, 262_144);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pigeon.toml");
        std::fs::write(&file, "store_heads_cached_max = 4\n").unwrap();
        let c = Config::load(Some(&file), |_| None).unwrap();
        assert_eq!(c.store().heads_cached_max, 4);
        std::fs::write(&file, "store_heads_cached_max = 0\n").unwrap();
        let err = Config::load(Some(&file), |_| None).unwrap_err().to_string();
        assert!(
            err.contains("store_heads_cached_max must be at least 1"),
            "{err}"
        );
    }

    /// Checks the journal size reaches the store in bytes, with the default
    /// when not set, and that sizes fjall refuses or past the ceiling are
    /// refused with the key's name and range.
    #[test]
    fn store_journal_mib_reaches_the_store() {
        assert_eq!(
            Config::default().store().journal_bytes_max,
            pigeon_store::embedded::JOURNAL_BYTES_MAX
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pigeon.toml");
        std::fs::write(&file, "store_journal_mib = 128\n").unwrap();
        let c = Config::load(Some(&file), |_| None).unwrap();
        assert_eq!(c.store().journal_bytes_max, 128 << 20);
        for bad in [0, 63, STORE_JOURNAL_MIB_CEILING + 1] {
            std::fs::write(&file, format!("store_journal_mib = {bad}\n")).unwrap();
            let err = Config::load(Some(&file), |_| None).unwrap_err().to_string();
            assert!(
                err.contains("store_journal_mib must be from 64 to 4096"),
                "{err}"
            );
        }
    }

    /// Checks TLS is off by default, on with both files (from the file or
    /// the environment), and that one file without the other is refused
    /// with a message naming both keys.
    #[test]
    fn tls_needs_both_files() {
        assert!(Config::default().tls().is_none());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pigeon.toml");
        std::fs::write(&file, "tls_cert = \"/etc/pigeon/cert.pem\"\n").unwrap();
        let err = Config::load(Some(&file), |_| None).unwrap_err().to_string();
        assert!(err.contains("tls_cert is set but tls_key is not"), "{err}");
        let env = |k: &str| (k == "PIGEON_TLS_KEY").then(|| "/etc/pigeon/key.pem".to_string());
        let c = Config::load(Some(&file), env).unwrap();
        assert_eq!(
            c.tls(),
            Some((
                Path::new("/etc/pigeon/cert.pem"),
                Path::new("/etc/pigeon/key.pem")
            ))
        );
        let err = Config::load(None, env).unwrap_err().to_string();
        assert!(err.contains("tls_key is set but tls_cert is not"), "{err}");
    }

    /// A bus without a shared store is refused (each node would have its
    /// own data); with a PostgreSQL store it gives the bus settings.
    #[test]
    fn a_bus_needs_a_shared_store() {
        let bus = |k: &str| (k == "PIGEON_BUS").then(|| "nats://127.0.0.1:4222".to_string());
        let err = Config::load(None, bus).unwrap_err().to_string();
        assert!(err.contains("bus needs a shared store"), "{err}");
        let both = |k: &str| match k {
            "PIGEON_BUS" => Some("nats://127.0.0.1:4222".to_string()),
            "PIGEON_STORE" => Some("postgres://pigeon@db/pigeon".to_string()),
            "PIGEON_NODE_ID" => Some("n1".to_string()),
            _ => None,
        };
        let c = Config::load(None, both).unwrap();
        let b = c.bus(vec!["tcp://n1:7700".into()]).unwrap();
        assert_eq!(
            (b.node_id.as_str(), b.url.as_str()),
            ("n1", "nats://127.0.0.1:4222")
        );
        assert!(Config::default().bus(Vec::new()).is_none());
        let bad = |k: &str| match k {
            "PIGEON_BUS" => Some("http://x".to_string()),
            "PIGEON_STORE" => Some("postgres://pigeon@db/pigeon".to_string()),
            _ => None,
        };
        assert!(
            Config::load(None, bad)
                .unwrap_err()
                .to_string()
                .contains("nats://")
        );
    }
}
