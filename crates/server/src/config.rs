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

/// Every setting of `pigeon serve`. See the README for each key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// TCP listener for the binary protocol.
    pub(crate) listen: String,
    /// HTTP listener: `/ws`, `/healthz`, `/readyz`.
    pub(crate) http: String,
    /// Data directory of the embedded store.
    pub(crate) data: PathBuf,
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
    /// Argon2id memory of new password hashes, KiB (lower only for tests).
    pub(crate) password_hash_memory_kib: u32,
    /// Argon2id passes of new password hashes.
    pub(crate) password_hash_iterations: u32,
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

/// The shortest admin token accepted, so a guessable one is refused.
pub(crate) const ADMIN_TOKEN_BYTES_MIN: usize = 16;

impl Default for Config {
    fn default() -> Self {
        let gw = GatewayConfig::default();
        let core = CoreConfig::default();
        Config {
            listen: "0.0.0.0:7700".into(),
            http: "0.0.0.0:7780".into(),
            data: PathBuf::from("pigeon-data"),
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
            shutdown_grace_secs: 10,
            log_format: "text".into(),
            group_large_threshold: core.group_large_threshold,
            group_members_max: core.group_members_max,
            recall_window_secs: (core.recall_window_ms / 1000) as u64,
            edit_window_secs: (core.edit_window_ms / 1000) as u64,
            typing_throttle_ms: core.typing_throttle_ms as u64,
            password_hash_memory_kib: core.password_hash_cost.memory_kib,
            password_hash_iterations: core.password_hash_cost.iterations,
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
                    _ => toml::Value::String(raw),
                };
                table.insert(key, value);
            }
        }
        let config: Config = table.try_into().context("invalid configuration")?;
        config.check()?;
        Ok(config)
    }

    /// Refuses settings that cannot work together.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
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
            ("sync_batch_events_max", self.sync_batch_events_max as usize),
            ("history_page_max", self.history_page_max as usize),
        ] {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
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
        Ok(())
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
            ..GatewayConfig::default()
        }
    }

    /// The store's settings.
    pub(crate) fn store(&self) -> StoreConfig {
        StoreConfig {
            log_retain_events: self.sync_log_retain_events,
            ..StoreConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
