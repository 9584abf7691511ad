//! [`PgServer`]: a real PostgreSQL 15 cluster for one test (or one test
//! binary), in a temporary directory, on a free loopback port.
//!
//! `initdb` runs with `--no-sync` (the cluster is thrown away), but the
//! server itself runs with `fsync=on` and `synchronous_commit=on`, so what
//! a test observes about durability is what production gets. Tests run as
//! root here; PostgreSQL refuses to run as root, so when the process is
//! root the data directory is handed to the `postgres` user and the server
//! runs as that user (`CommandExt::uid`, no `sudo` needed).
//!
//! The binaries come from [`PG_BIN_DIR`] (or `PIGEON_PG_BIN`); if they are
//! missing and we are root, `postgresql-15` is installed through apt once
//! (under a lock, since test processes start in parallel).
//!
//! Cleanup: dropping the server stops it (fast shutdown, then SIGKILL) and
//! removes the directory — also while a test panics. A small watchdog
//! process stops the server if the test process dies without unwinding
//! (killed by a timeout, `abort`).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where Debian's `postgresql-15` puts the server binaries.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// How long a starting server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting, each on a new port (another process may take the
/// free port between our probe and PostgreSQL's bind).
const START_ATTEMPTS_MAX: usize = 3;
/// The superuser every database belongs to (trust authentication on
/// loopback only).
pub const SUPERUSER: &str = "postgres";

/// A running PostgreSQL server; stopped and deleted on drop.
#[derive(Debug)]
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    /// (uid, gid) the server runs as when we are root.
    owner: Option<(u32, u32)>,
    databases: AtomicU32,
}

impl PgServer {
    /// Creates a cluster in a new temporary directory and starts it; waits
    /// until it accepts connections.
    pub fn start() -> anyhow::Result<PgServer> {
        let bin = binaries()?;
        let owner = server_owner()?;
        let dir = tempfile::Builder::new()
            .prefix("pigeon-pg-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("handing the cluster directory to the postgres user")?;
        }
        let mut server = PgServer {
            dir,
            bin,
            port: 0,
            child: None,
            owner,
            databases: AtomicU32::new(0),
        };
        server.initdb()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS_MAX {
            match server.launch(crate::free_port()) {
                Ok(()) => {
                    server.watchdog();
                    return Ok(server);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The server's data directory (owned by the server's user).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Creates a new, empty database and returns its URL. Each call gives
    /// a different database, so tests sharing a server do not meet.
    pub fn create_database(&self) -> anyhow::Result<String> {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("pigeon_test_{n}");
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs SQL in database `db` with `psql` and returns what it printed
    /// (unaligned, tuples only: one row per line, columns split by `|`).
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", SUPERUSER, "-d", db, "-X", "-q", "-A", "-t"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server (fast shutdown: open sessions are cut, committed
    /// data is kept). Idempotent; also done on drop.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGINT is PostgreSQL's fast shutdown.
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the stopped server again on the same port and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch(self.port)
    }

    fn as_owner(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(self.dir.path());
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let mut cmd = Command::new(self.bin.join("initdb"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "--auth=trust", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C"])
            .stdin(Stdio::null());
        self.as_owner(&mut cmd);
        let out = cmd.output().context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn launch(&mut self, port: u16) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the server log")?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Durability as in production: every commit reaches the disk.
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            // Small: several test clusters share a 2-core machine.
            .args(["-c", "shared_buffers=16MB", "-c", "max_connections=200"])
            .args(["-c", "log_min_messages=warning"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.as_owner(&mut cmd);
        let mut child = cmd.spawn().context("starting postgres")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                bail!("postgres exited ({status}) while starting:\n{log}");
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-U", SUPERUSER, "-d", "postgres"])
                .status()
                .context("running pg_isready")?;
            if ready.success() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("postgres did not accept connections within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.port = port;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server if this process dies without dropping it.
    fn watchdog(&self) {
        let Some(child) = &self.child else {
            return;
        };
        let script = format!(
            "while kill -0 {me} 2>/dev/null && kill -0 {pg} 2>/dev/null; do sleep 1; done; \
             if kill -0 {pg} 2>/dev/null; then kill -INT {pg}; sleep 5; kill -KILL {pg} 2>/dev/null; \
             rm -rf '{dir}'; fi",
            me = std::process::id(),
            pg = child.id(),
            dir = self.dir.path().display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory holding `initdb` and `postgres`, installing them if
/// needed and possible.
fn binaries() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(std::env::var("PIGEON_PG_BIN").unwrap_or_else(|_| PG_BIN_DIR.into()));
    if has_binaries(&dir) {
        return Ok(dir);
    }
    if !is_root()? {
        bail!(
            "PostgreSQL server binaries are missing in {} (install postgresql-15, or set PIGEON_PG_BIN)",
            dir.display()
        );
    }
    // One installer at a time across test processes; the later ones find
    // the binaries in place.
    let status = Command::new("flock")
        .arg("/tmp/pigeon-testkit-apt.lock")
        .args(["sh", "-c"])
        .arg(format!(
            "test -x '{}/initdb' || {{ apt-get update -q && \
             DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15; }}",
            dir.display()
        ))
        .stdin(Stdio::null())
        .status()
        .context("installing postgresql-15 with apt-get")?;
    if !status.success() || !has_binaries(&dir) {
        bail!("installing postgresql-15 failed ({status})");
    }
    Ok(dir)
}

fn has_binaries(dir: &Path) -> bool {
    ["initdb", "postgres", "pg_isready", "psql"]
        .iter()
        .all(|b| dir.join(b).exists())
}

fn id(args: &[&str]) -> anyhow::Result<u32> {
    let out = Command::new("id")
        .args(args)
        .output()
        .context("running id")?;
    if !out.status.success() {
        bail!(
            "id {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("parsing the output of id")
}

fn is_root() -> anyhow::Result<bool> {
    Ok(id(&["-u"])? == 0)
}

/// The `postgres` user's ids when we are root (PostgreSQL refuses root).
fn server_owner() -> anyhow::Result<Option<(u32, u32)>> {
    if !is_root()? {
        return Ok(None);
    }
    Ok(Some((id(&["-u", SUPERUSER])?, id(&["-g", SUPERUSER])?)))
}
