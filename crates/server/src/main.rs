//! `pigeon`: the server (`pigeon serve`) and, in the same binary, the
//! terminal client commands (`pigeon register`, `login`, `send`, `sync`,
//! `listen`, `history`, ...), which come from `pigeon-cli`.
//!
//! Layout: [`config`] (file, environment, flags), [`serve`] (wiring, the
//! HTTP side, signals and orderly shutdown), [`tls`] (certificates, HTTPS),
//! [`admin`] (the admin HTTP API and its OpenAPI document), [`webhooks`]
//! (deliveries), [`web`] (the embedded web chat app).

mod admin;
mod backend;
mod config;
mod serve;
mod tls;
mod web;
mod webhooks;

/// mimalloc instead of the system allocator: the committer and the
/// connection tasks allocate many small short-lived values (see
/// BENCHMARKS.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pigeon_cli::{ClientArgs, ClientCommand};

/// A multi-threaded runtime with `workers` threads (tokio's default, one
/// per core, if `None`).
fn runtime(workers: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build().expect("starting the runtime")
}

/// `pigeon serve`: the configuration first, since it sizes the runtime.
fn run_server(args: ServeArgs) -> anyhow::Result<()> {
    // Flags override the environment, which overrides the file; the whole
    // result is checked once.
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let flags = [
        ("PIGEON_DATA", path(&args.data)),
        ("PIGEON_STORE", args.store.clone()),
        ("PIGEON_BUS", args.bus.clone()),
        ("PIGEON_LISTEN", args.listen.clone()),
        ("PIGEON_HTTP", args.http.clone()),
        ("PIGEON_TLS_CERT", path(&args.tls_cert)),
        ("PIGEON_TLS_KEY", path(&args.tls_key)),
    ];
    let config = config::Config::load(args.config.as_deref(), |k| {
        flags
            .iter()
            .find(|(name, v)| *name == k && v.is_some())
            .and_then(|(_, v)| v.clone())
            .or_else(|| std::env::var(k).ok())
    })?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    runtime(Some(config.runtime_workers(cores))).block_on(serve::run(config))
}

#[derive(Debug, Parser)]
#[command(
    name = "pigeon",
    version,
    about = "Pigeon: a self-hostable instant-messaging server and its client"
)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (embedded storage in one data directory, or
    /// PostgreSQL with --store postgres://... for several nodes).
    Serve(ServeArgs),
    #[command(flatten)]
    Client(ClientCommand),
}

/// Flags of `pigeon serve`; each overrides the config file and environment.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML config file (keys as in the README).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (config key `data`).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Store: a postgres:// URL for cluster mode (config key `store`;
    /// default: the embedded store in the data directory).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Cluster bus: a nats:// URL (config key `bus`; default: none, a
    /// single node). Needs a shared --store.
    #[arg(long, value_name = "URL")]
    bus: Option<String>,
    /// TCP address for the binary protocol (config key `listen`).
    #[arg(long)]
    listen: Option<String>,
    /// HTTP address for /ws and health checks (config key `http`).
    #[arg(long)]
    http: Option<String>,
    /// PEM certificate chain: serve TLS on both ports (config key `tls_cert`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (config key `tls_key`).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One crypto provider for the process (server and client TLS), chosen
    // here once: ring, as in the workspace's rustls features.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Serve(args) => run_server(args),
        Command::Client(cmd) => runtime(None).block_on(pigeon_cli::run(cli.client, cmd)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
