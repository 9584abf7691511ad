//! Overload control and rate limits (WeChat's DAGOR, simplified).
//!
//! The gateway watches how long write requests take from arrival to answer
//! (an exponentially weighted average). Past `overload_latency` it raises an
//! admission level, at most one step per window: level 1 refuses
//! low-priority requests (typing, presence), level 2 also normal ones
//! (sends, group changes, history). Login, sync, ping and logout are always
//! admitted, so a device can always catch up. Refused requests get `BUSY`
//! with a retry-after; nothing is queued without bound and nothing
//! acknowledged is lost, because refusal happens before any work.
//!
//! Separately, token buckets limit each user's request rate and each IP
//! address's connection rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pigeon_core::UserId;
use pigeon_proto::Body;

/// How often the admission level may move by one step.
pub const ADMISSION_WINDOW: Duration = Duration::from_millis(100);
/// Highest admission level.
pub const ADMISSION_LEVEL_MAX: u8 = 2;
/// Token buckets kept before idle ones are dropped.
pub const BUCKETS_MAX: usize = 100_000;

/// How important a request is under overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Refused first: typing, presence.
    Low = 0,
    /// Refused at the highest level: sends, changes, reads of history.
    Normal = 1,
    /// Always admitted: login, register, sync, ping, logout.
    Critical = 2,
}

/// The priority of a request body.
pub fn priority(body: &Body) -> Priority {
    match body {
        Body::Ping(_)
        | Body::LoginRequest(_)
        | Body::RegisterRequest(_)
        | Body::SyncRequest(_)
        | Body::LogoutRequest(_) => Priority::Critical,
        Body::SetTypingRequest(_) | Body::GetPresenceRequest(_) | Body::SetPrivacyRequest(_) => {
            Priority::Low
        }
        _ => Priority::Normal,
    }
}

/// Limits of the admission controller.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Average answer time of normal requests above which the server counts
    /// as overloaded.
    pub overload_latency: Duration,
    /// Sustained requests per second per user (0: unlimited).
    pub user_requests_per_sec: u32,
    /// Requests a user may make in a burst.
    pub user_requests_burst: u32,
    /// Sustained new connections per second per IP address (0: unlimited).
    pub ip_connections_per_sec: u32,
    /// New connections an IP address may open in a burst.
    pub ip_connections_burst: u32,
    /// Sustained login and register attempts per second per IP address
    /// (0: unlimited); slows down password guessing.
    pub ip_logins_per_sec: u32,
    /// Login and register attempts per IP address in a burst.
    pub ip_logins_burst: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            overload_latency: Duration::from_millis(500),
            user_requests_per_sec: 100,
            user_requests_burst: 200,
            ip_connections_per_sec: 20,
            ip_connections_burst: 100,
            ip_logins_per_sec: 5,
            ip_logins_burst: 20,
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Takes one token, or says how long until one is there.
fn take(
    buckets: &Mutex<HashMap<u128, Bucket>>,
    key: u128,
    rate: u32,
    burst: u32,
    now: Instant,
) -> Result<(), u32> {
    if rate == 0 {
        return Ok(());
    }
    let mut map = buckets.lock().expect("rate limiter lock poisoned");
    if map.len() >= BUCKETS_MAX && !map.contains_key(&key) {
        // Buckets that have refilled hold no information: drop them.
        let full = f64::from(burst);
        map.retain(|_, b| {
            b.tokens + now.duration_since(b.at).as_secs_f64() * f64::from(rate) < full
        });
        if map.len() >= BUCKETS_MAX {
            map.clear();
        }
    }
    let b = map.entry(key).or_insert(Bucket {
        tokens: f64::from(burst),
        at: now,
    });
    b.tokens =
        (b.tokens + now.duration_since(b.at).as_secs_f64() * f64::from(rate)).min(f64::from(burst));
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        Ok(())
    } else {
        Err((((1.0 - b.tokens) / f64::from(rate)) * 1000.0).ceil() as u32)
    }
}

/// The admission controller of one server.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    started: Instant,
    level: AtomicU8,
    /// Weighted average answer time of normal requests, µs.
    ewma_us: AtomicU64,
    /// Samples in the current window, and the window's start (µs since
    /// `started`).
    samples: AtomicU64,
    window_start_us: AtomicU64,
    users: Mutex<HashMap<u128, Bucket>>,
    ips: Mutex<HashMap<u128, Bucket>>,
    logins: Mutex<HashMap<u128, Bucket>>,
}

impl Admission {
    /// A controller with `config`.
    pub fn new(config: AdmissionConfig) -> Admission {
        Admission {
            config,
            started: Instant::now(),
            level: AtomicU8::new(0),
            ewma_us: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            window_start_us: AtomicU64::new(0),
            users: Mutex::default(),
            ips: Mutex::default(),
            logins: Mutex::default(),
        }
    }

    /// The current level (0: admit everything).
    pub fn level(&self) -> u8 {
        self.level.load(Ordering::Relaxed)
    }

    /// Records how long a normal request took from arrival to answer.
    pub fn observe(&self, took: Duration) {
        let sample = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 4 + sample) / 5
        };
        self.ewma_us.store(new, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// Moves the level by at most one step per window.
    fn adjust(&self) {
        let now_us = self.started.elapsed().as_micros() as u64;
        let start = self.window_start_us.load(Ordering::Relaxed);
        if now_us.saturating_sub(start) < ADMISSION_WINDOW.as_micros() as u64 {
            return;
        }
        if self
            .window_start_us
            .compare_exchange(start, now_us, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let samples = self.samples.swap(0, Ordering::Relaxed);
        let ewma = self.ewma_us.load(Ordering::Relaxed);
        let limit = self.config.overload_latency.as_micros() as u64;
        let level = self.level.load(Ordering::Relaxed);
        let next = if samples > 0 && ewma > limit {
            (level + 1).min(ADMISSION_LEVEL_MAX)
        } else if samples == 0 || ewma < limit / 2 {
            // Nothing measured (everything refused or idle) counts as
            // recovered: try admitting again, one step at a time.
            if samples == 0 {
                self.ewma_us.store(ewma / 2, Ordering::Relaxed);
            }
            level.saturating_sub(1)
        } else {
            level
        };
        if next != level {
            tracing::info!(
                level = next,
                ewma_ms = ewma / 1000,
                "admission level changed"
            );
            metrics::gauge!(crate::metrics::ADMISSION_LEVEL).set(f64::from(next));
            self.level.store(next, Ordering::Relaxed);
        }
    }

    /// Whether to take a request of this priority now; if not, a retry-after
    /// in milliseconds.
    pub fn admit(&self, p: Priority) -> Result<(), u32> {
        self.adjust();
        let level = self.level();
        let refused = match p {
            Priority::Critical => false,
            Priority::Normal => level >= 2,
            Priority::Low => level >= 1,
        };
        if refused {
            // Spread the retries so they do not return all at once.
            Err(500 + rand::random_range(0..1000))
        } else {
            Ok(())
        }
    }

    /// One request of `user` against their rate limit.
    pub fn user_request(&self, user: UserId) -> Result<(), u32> {
        let c = &self.config;
        take(
            &self.users,
            u128::from(user),
            c.user_requests_per_sec,
            c.user_requests_burst,
            Instant::now(),
        )
    }

    /// One new connection from `ip` against its rate limit.
    pub fn ip_connection(&self, ip: IpAddr) -> Result<(), u32> {
        let c = &self.config;
        take(
            &self.ips,
            ip_key(ip),
            c.ip_connections_per_sec,
            c.ip_connections_burst,
            Instant::now(),
        )
    }

    /// One login or register attempt from `ip` against its rate limit.
    pub fn ip_login(&self, ip: IpAddr) -> Result<(), u32> {
        let c = &self.config;
        take(
            &self.logins,
            ip_key(ip),
            c.ip_logins_per_sec,
            c.ip_logins_burst,
            Instant::now(),
        )
    }
}

fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket gives its burst, then refuses with the wait for the next
    /// token, and refills over time.
    #[test]
    fn token_buckets_refill() {
        let m = Mutex::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(take(&m, 1, 10, 5, t0).is_ok());
        }
        let wait = take(&m, 1, 10, 5, t0).unwrap_err();
        assert!((90..=100).contains(&wait), "{wait}");
        assert!(take(&m, 2, 10, 5, t0).is_ok(), "other keys are independent");
        assert!(take(&m, 1, 10, 5, t0 + Duration::from_millis(250)).is_ok());
        assert!(take(&m, 1, 0, 0, t0).is_ok(), "rate 0 is unlimited");
    }

    /// Slow answers raise the level one step per window; low priority is
    /// refused first, critical never; without samples the level falls.
    #[test]
    fn levels_follow_latency() {
        let a = Admission::new(AdmissionConfig {
            overload_latency: Duration::from_millis(10),
            ..Default::default()
        });
        assert!(a.admit(Priority::Low).is_ok());
        for step in 1..=2 {
            a.observe(Duration::from_millis(50));
            a.window_start_us.store(0, Ordering::Relaxed);
            std::thread::sleep(ADMISSION_WINDOW);
            let _ = a.admit(Priority::Critical);
            assert_eq!(a.level(), step);
        }
        assert!(a.admit(Priority::Low).is_err());
        assert!(a.admit(Priority::Normal).is_err());
        assert!(a.admit(Priority::Critical).is_ok());
        std::thread::sleep(ADMISSION_WINDOW);
        let _ = a.admit(Priority::Critical);
        assert_eq!(a.level(), 1, "no samples: one step down");
    }
}
