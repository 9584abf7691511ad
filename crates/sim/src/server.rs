//! The server host: the store (committer as a task, over the engine that
//! survives crashes), the service and the gateway on simulated TCP. Each
//! start is a restart: recovery from what the engine holds.

use std::sync::Arc;
use std::time::Duration;

use pigeon_core::{CoreConfig, Service};
use pigeon_gateway::admission::AdmissionConfig;
use pigeon_gateway::{Gateway, GatewayConfig, Registry};
use pigeon_store::{LogStore, MemoryEngine, StoreConfig};

use crate::clock::SimClock;
use crate::plan::PORT;

/// The gateway's limits in a run: short timeouts, so stalled connections
/// end within the run, and no admission control (it measures real time,
/// which would make a run depend on the machine's speed).
pub(crate) fn gateway_config() -> GatewayConfig {
    GatewayConfig {
        handshake_timeout: Duration::from_secs(3),
        heartbeat_interval: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(3),
        admission: AdmissionConfig {
            overload_latency: Duration::from_secs(3600),
            user_requests_per_sec: 0,
            ip_connections_per_sec: 0,
            ip_logins_per_sec: 0,
            ..AdmissionConfig::default()
        },
        ..GatewayConfig::default()
    }
}

/// The server's software: runs until the host crashes.
pub(crate) async fn serve(
    engine: Arc<MemoryEngine>,
    core: CoreConfig,
    store: StoreConfig,
    dummy_hash: String,
) -> turmoil::Result {
    let store = Arc::new(LogStore::start_in_task(engine, store));
    let registry = Arc::new(Registry::default());
    // With the dummy hash made in the setup: `Service::new` would hash on
    // the blocking pool, whose real thread makes the start's simulated
    // timing race against the host's tick.
    let service = Service::with_dummy_hash(
        store,
        registry.clone(),
        Arc::new(SimClock),
        core,
        dummy_hash,
    )
    .await?;
    let gateway = Gateway::new(Arc::new(service), registry, gateway_config());
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(gateway.clone().serve_stream(stream, peer));
    }
}
