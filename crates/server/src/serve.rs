//! `pigeon serve`: opens the store, wires core, gateway and the HTTP side
//! (each over TLS when `tls_cert` and `tls_key` are set), and shuts down in
//! order on SIGTERM or SIGINT: stop accepting, let connections finish their
//! in-flight requests and say goodbye, commit what is queued, exit 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pigeon_core::{Service, SystemClock};
use pigeon_gateway::{Gateway, Registry};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;

/// Runs the server until a signal.
pub(crate) async fn run(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    small_pages();
    // Before the store opens, so a bad certificate fails at once.
    let tls = match config.tls() {
        Some((cert, key)) => Some(crate::tls::load(cert, key)?),
        None => None,
    };
    let metrics = install_metrics()?;
    let backend = Arc::new(crate::backend::Backend::open(&config).await?);
    let store = backend.store();
    let registry = Arc::new(Registry::default());
    // Bind first: a cluster node announces its endpoints when it joins.
    let tcp = listen(&config.listen, config.listen_backlog)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let http = listen(&config.http, config.listen_backlog)
        .await
        .with_context(|| format!("binding {}", config.http))?;
    let (tcp_addr, http_addr) = (tcp.local_addr()?, http.local_addr()?);
    let cluster = match config.bus(node_endpoints(&config, tcp_addr, http_addr, tls.is_some())) {
        Some(bus) => {
            let url = bus.url.clone();
            let cluster = pigeon_bus::Cluster::start(bus, registry.clone())
                .await
                .map_err(anyhow::Error::msg)?;
            tracing::info!(node = cluster.node_id(), bus = %url, "joined the cluster bus");
            Some(cluster)
        }
        None => None,
    };
    let notifier: Arc<dyn pigeon_core::Notifier> = match &cluster {
        Some(c) => c.clone(),
        None => registry.clone(),
    };
    let service = Arc::new(
        Service::new(
            store.clone(),
            notifier.clone(),
            Arc::new(SystemClock),
            config.core(),
        )
        .await
        .context("starting the service")?,
    );
    metrics::gauge!("pigeon_connections_max").set(config.connections_max as f64);
    metrics::gauge!("pigeon_runtime_threads")
        .set(tokio::runtime::Handle::current().metrics().num_workers() as f64);
    let gateway = Gateway::new(service.clone(), registry.clone(), config.gateway());
    if let Some(c) = &cluster {
        // Users of a node that died went offline: tell their contacts.
        let (svc, st) = (service.clone(), store.clone());
        c.set_gone_hook(Arc::new(move |users| {
            let (svc, st) = (svc.clone(), st.clone());
            tokio::spawn(async move {
                for u in users {
                    if let Ok(Some(user)) = pigeon_core::Store::user_by_id(&*st, u).await
                        && let Err(e) = svc.presence_changed(u, &user.username, false).await
                    {
                        tracing::warn!(error = %e, "presence update for a dead node's user failed");
                    }
                }
            });
        }));
        let g = gateway.clone();
        c.set_load(Arc::new(move || g.open_connections() as u64));
        let c2 = c.clone();
        gateway.set_redirect_source(Arc::new(move || c2.redirect_targets()));
    }
    let admin = crate::admin::AdminState {
        service,
        registry: registry.clone(),
        gateway: gateway.clone(),
        backend: backend.clone(),
        token_hash: crate::admin::AdminState::token_hash(&config.admin_token.0),
        started: std::time::Instant::now(),
    };

    tracing::info!(
        tcp = %tcp_addr,
        http = %http_addr,
        tls = tls.is_some(),
        store = %backend.describe(&config),
        admin_api = admin.token_hash.is_some(),
        "pigeon listening"
    );

    let tcp_task = match &tls {
        Some(tls) => tokio::spawn(gateway.clone().serve_tls(tcp, tls.protocol.clone())),
        None => tokio::spawn(gateway.clone().serve_tcp(tcp)),
    };
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let webhooks_task = tokio::spawn(crate::webhooks::run(
        store.clone(),
        notifier.clone(),
        config.webhooks(),
        stop_rx.clone(),
    ));
    let app = router(App {
        gateway: gateway.clone(),
        backend: backend.clone(),
        metrics,
        endpoints: Arc::new(Endpoints {
            advertised: config.advertise_endpoints.clone(),
            tcp_port: tcp_addr.port(),
            http_port: http_addr.port(),
            tls: tls.is_some(),
            cluster: cluster.clone(),
        }),
    })
    .merge(crate::admin::router(admin));
    // Last, as the fallback: every route above keeps its paths. Without an
    // explicit fallback the admin router's token check would answer every
    // unknown path with 401.
    let app = if config.web_app {
        app.fallback(crate::web::serve)
    } else {
        app.fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
    };
    let http_task = match tls {
        Some(tls) => tokio::spawn(crate::tls::serve_https(
            http,
            tls.http,
            app,
            stop_rx,
            gateway.config().handshake_timeout,
        )),
        None => tokio::spawn(async move {
            let served = axum::serve(
                http,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await.map(|_| ());
            })
            .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the HTTP server failed");
            }
        }),
    };

    let failed = tokio::select! {
        _ = signal() => false,
        _ = store_failure(&backend) => true,
    };
    if failed {
        tracing::error!(
            "the store failed a commit; draining and exiting so that a supervisor restarts the server (recovery replays the journal)"
        );
    }
    tracing::info!(
        open = gateway.open_connections(),
        "shutting down: draining connections"
    );
    if let Some(c) = &cluster {
        // Other nodes stop offering this one before its clients move.
        c.leave().await;
    }
    gateway
        .shutdown(Duration::from_secs(config.shutdown_grace_secs))
        .await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), webhooks_task).await;
    tcp_task.abort();
    backend.shutdown().await;
    tracing::info!("stopped");
    if failed {
        anyhow::bail!("stopped after a storage failure");
    }
    Ok(())
}

/// What the HTTP handlers need.
#[derive(Clone)]
struct App {
    gateway: Arc<Gateway>,
    backend: Arc<crate::backend::Backend>,
    metrics: PrometheusHandle,
    endpoints: Arc<Endpoints>,
}

/// What `GET /v1/endpoints` answers with.
struct Endpoints {
    /// Configured client-facing URLs, if any.
    advertised: Vec<String>,
    /// The bound protocol and HTTP ports, to derive URLs from a request's
    /// host when none are configured.
    tcp_port: u16,
    http_port: u16,
    /// Whether both ports speak TLS (tls:// and wss:// then).
    tls: bool,
    /// In a cluster: the live nodes, least loaded first.
    cluster: Option<Arc<pigeon_bus::Cluster>>,
}

/// Binds `addr` (host:port, the first address it resolves to) with room
/// for `backlog` connections waiting to be accepted (tokio's `bind` uses
/// 1,024, and the kernel caps either at `net.core.somaxconn`).
async fn listen(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// This node's client-facing URLs for the other nodes to list: the
/// advertised ones, else derived from the bound addresses (a wildcard
/// address is replaced by the host name, which must then resolve for
/// clients; set `advertise_endpoints` when it does not).
fn node_endpoints(config: &Config, tcp: SocketAddr, http: SocketAddr, tls: bool) -> Vec<String> {
    if !config.advertise_endpoints.is_empty() {
        return config.advertise_endpoints.clone();
    }
    let host = |addr: SocketAddr| {
        if addr.ip().is_unspecified() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        }
    };
    let (t, w) = if tls { ("tls", "wss") } else { ("tcp", "ws") };
    vec![
        format!("{t}://{}:{}", host(tcp), tcp.port()),
        format!("{w}://{}:{}/ws", host(http), http.port()),
    ]
}

/// How long clients may cache the endpoint list.
const ENDPOINTS_TTL_SECS: u64 = 300;
/// How long clients may cache the endpoint list of a cluster.
const CLUSTER_ENDPOINTS_TTL_SECS: u64 = 30;

fn router(app: App) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/v1/endpoints", get(endpoints))
        .with_state(app)
}

async fn websocket(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    app.gateway.upgrade_websocket(request, peer.to_string())
}

/// Ready unless draining, the embedded store failed (then restart the
/// process) or the database does not answer.
async fn ready(State(app): State<App>) -> Response {
    if app.gateway.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match app.backend.ready().await {
        Ok(()) => "ready".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

/// Histogram buckets for durations, in seconds: 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
/// Buckets for jobs per group commit.
const JOBS_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Installs the process-wide Prometheus recorder that every crate's
/// `metrics::` calls report to.
fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_jobs".into()), JOBS_BUCKETS)?
        .install_recorder()
        .context("installing the metrics recorder")?;
    metrics::describe_counter!(
        pigeon_gateway::metrics::REQUESTS_TOTAL,
        "Requests answered, by type and outcome"
    );
    metrics::describe_histogram!(
        pigeon_gateway::metrics::REQUEST_DURATION_SECONDS,
        "Time from reading a request to queueing its answer"
    );
    Ok(handle)
}

async fn render_metrics(State(app): State<App>) -> Response {
    app.metrics.run_upkeep();
    let mut text = app.metrics.render();
    // Gauges that are read rather than pushed.
    text.push_str(&format!(
        "# TYPE pigeon_open_connections gauge\npigeon_open_connections {}\n",
        app.gateway.open_connections()
    ));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

/// The gateways a client should use: `{"endpoints": [...], "ttl_secs": N}`.
async fn endpoints(State(app): State<App>, headers: axum::http::HeaderMap) -> Response {
    let list = if let Some(cluster) = &app.endpoints.cluster {
        cluster.endpoints()
    } else if app.endpoints.advertised.is_empty() {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name).to_string())
            .unwrap_or_else(|| "127.0.0.1".into());
        let (tcp, ws) = if app.endpoints.tls {
            ("tls", "wss")
        } else {
            ("tcp", "ws")
        };
        vec![
            format!("{tcp}://{host}:{}", app.endpoints.tcp_port),
            format!("{ws}://{host}:{}/ws", app.endpoints.http_port),
        ]
    } else {
        app.endpoints.advertised.clone()
    };
    // Cluster membership changes faster than a fixed deployment's.
    let ttl = if app.endpoints.cluster.is_some() {
        CLUSTER_ENDPOINTS_TTL_SECS
    } else {
        ENDPOINTS_TTL_SECS
    };
    let body = serde_json::json!({ "endpoints": list, "ttl_secs": ttl });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Resolves when the embedded store has failed a commit: it then refuses
/// every write, so the process is better restarted than kept running.
async fn store_failure(backend: &crate::backend::Backend) {
    while backend.healthy() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Turns transparent huge pages off for the process. The allocator asks
/// for huge pages on its arenas, and the memory the store's memtables and
/// write batches churn through is given back to the kernel and faulted in
/// again: with huge pages each of those faults zeroes 2 MiB on the
/// committer's thread, a tenth of its CPU at 25,000 msg/s and a stall each
/// time (BENCHMARKS.md, "Huge pages"). Small pages make each fault cheap.
fn small_pages() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %e, "could not turn transparent huge pages off");
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
