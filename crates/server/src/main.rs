//! `pigeon`: the server (`pigeon serve`) and, in the same binary, the
//! terminal client commands (`pigeon register`, `login`, `send`, `sync`,
//! `listen`, `history`, ...), which come from `pigeon-cli`.
//!
//! Layout: [`config`] (file, environment, flags), [`serve`] (wiring, the
//! HTTP side, signals and orderly shutdown), [`tls`] (certificates, HTTPS),
//! [`admin`] (the admin HTTP API and its OpenAPI document), [`webhooks`]
//! (deliveries), [`web`] (the embedded web chat app).

mod admin;
mod config;
mod serve;
mod tls;
mod web;
mod webhooks;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pigeon_cli::{ClientArgs, ClientCommand};

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
    /// Run the server (embedded storage in one data directory).
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                let mut config =
                    config::Config::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
                if let Some(d) = args.data {
                    config.data = d;
                }
                if let Some(l) = args.listen {
                    config.listen = l;
                }
                if let Some(h) = args.http {
                    config.http = h;
                }
                if let Some(c) = args.tls_cert {
                    config.tls_cert = c;
                }
                if let Some(k) = args.tls_key {
                    config.tls_key = k;
                }
                config.check()?;
                serve::run(config).await
            }
            Command::Client(cmd) => pigeon_cli::run(cli.client, cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
