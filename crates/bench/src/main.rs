//! `pigeon-bench`: measures a real Pigeon server.
//!
//! It starts its own `pigeon serve` (the binary next to itself, or
//! `--pigeon PATH`) on free loopback ports with a temporary data directory,
//! cheap password hashes and no rate limits, or drives a running server
//! given by `--server`. Each scenario prints a human summary (or `--json`)
//! and can draw its latency distributions to an SVG file (`--plot`).
//!
//! Layout:
//! - `target.rs`: the server under test (start, `/metrics`, resident memory).
//! - `users.rs`: registering, logging in and connecting many users.
//! - `wire.rs`: a minimal protocol client that counts the bytes it reads.
//! - `stats.rs`: HDR histograms, progress bars, the report.
//! - `plot.rs`: percentile plots as SVG.
//! - `scenarios/`: one module per scenario.

mod plot;
mod scenarios;
mod stats;
mod target;
mod users;
mod wire;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::stats::Report;

/// Benchmarks a Pigeon server: throughput and latency of direct messages,
/// memory per idle connection, catch-up cost, group fan-out, reconnect storms.
#[derive(Parser, Debug)]
#[command(name = "pigeon-bench", version)]
struct Cli {
    /// A running server's protocol URL (`tcp://host:port`) instead of
    /// starting one. Its users are left behind (names carry a run tag).
    #[arg(long, global = true)]
    server: Option<String>,
    /// With `--server`: its HTTP address (`host:port`) for `/metrics` and
    /// WebSocket (`/ws`).
    #[arg(long, global = true)]
    http: Option<String>,
    /// With `--server`: the server's process id, to read its resident memory
    /// (`connections` needs it).
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// The `pigeon` binary to start (default: next to this one).
    #[arg(long, global = true)]
    pigeon: Option<PathBuf>,
    /// An extra `key = value` line for the generated server config (may repeat),
    /// e.g. `--set sync_batch_events_max=1024`.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the results as one JSON object instead of the summary.
    #[arg(long, global = true)]
    json: bool,
    /// Draw the latency distributions to this SVG file.
    #[arg(long, global = true, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// N user pairs exchanging messages: acknowledged msg/s, end-to-end
    /// latency, fsync batch size, and a raw TCP echo baseline.
    Direct(scenarios::direct::Args),
    /// N authenticated idle connections: server memory per connection.
    Connections(scenarios::connections::Args),
    /// A user offline while K messages arrive: time to sync and bytes per message.
    Catchup(scenarios::catchup::Args),
    /// Messages to a group of M members with a share online: time until all online have it.
    Group(scenarios::group::Args),
    /// A reconnect storm of N clients: handshakes/s and time until all are synced.
    Churn(scenarios::churn::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let options = target::Options {
        server: cli.server.clone(),
        http: cli.http.clone(),
        server_pid: cli.server_pid,
        pigeon: cli.pigeon.clone(),
        set: cli.set.clone(),
    };
    let report: Report = match &cli.scenario {
        Scenario::Direct(a) => scenarios::direct::run(&options, a).await?,
        Scenario::Connections(a) => scenarios::connections::run(&options, a).await?,
        Scenario::Catchup(a) => scenarios::catchup::run(&options, a).await?,
        Scenario::Group(a) => scenarios::group::run(&options, a).await?,
        Scenario::Churn(a) => scenarios::churn::run(&options, a).await?,
    };
    if let Some(path) = &cli.plot {
        if report.curves.is_empty() {
            eprintln!("(no latency distribution to plot for this scenario)");
        } else {
            plot::percentiles(path, &report.title, &report.curves)?;
            eprintln!("plot written to {}", path.display());
        }
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.text);
    }
    Ok(())
}
