//! Accounts, sessions and the group, made on the engine before the
//! simulation starts: registering and logging in hash passwords on tokio's
//! blocking pool (real threads, outside simulated time), so they happen
//! here, once, on an ordinary runtime. The server then starts on the same
//! engine inside the simulation as it would after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pigeon_core::accounts::HashCost;
use pigeon_core::{CoreConfig, NullNotifier, Service};
use pigeon_proto::v1::CreateGroupRequest;
use pigeon_store::{LogStore, MemoryEngine, StoreConfig};

use crate::clock::SimClock;
use crate::plan::Plan;

/// Every account's password.
const PASSWORD: &str = "simulated-password";
/// Sessions outlive any run, whatever the real date (the gateway checks
/// expiry against the real clock; see `clock.rs`).
const SESSION_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A user made for the run.
#[derive(Debug, Clone)]
pub(crate) struct User {
    /// The user's id.
    pub(crate) id: u64,
    /// A session token (one device per user).
    pub(crate) token: String,
}

/// What the run starts from.
pub(crate) struct Setup {
    /// The engine, holding the accounts and the group; it outlives server
    /// crashes (what was committed to it is what is durable).
    pub(crate) engine: Arc<MemoryEngine>,
    /// Every user by name.
    pub(crate) users: BTreeMap<String, User>,
    /// The group of everyone, made by the first writer.
    pub(crate) group: String,
    /// A password hash for the server's starts (see `server.rs`).
    pub(crate) dummy_hash: String,
}

/// The service's settings in a run.
pub(crate) fn core_config(plan: &Plan) -> CoreConfig {
    CoreConfig {
        session_ttl_ms: SESSION_TTL.as_millis() as i64,
        // The cheapest Argon2id: the hash at every server start is real work.
        password_hash_cost: HashCost {
            memory_kib: 8,
            iterations: 1,
        },
        group_large_threshold: plan.group_large_threshold,
        ..CoreConfig::default()
    }
}

/// The store's settings in a run.
pub(crate) fn store_config(plan: &Plan) -> StoreConfig {
    StoreConfig {
        seq_step: plan.seq_step,
        // With a retention the checker takes the conversations' histories
        // as the truth and checks each log against them.
        log_retain_events: plan.log_retain_events,
        // Far below the users and conversations a run has, so the readers'
        // marks are emptied and loaded again all through the run.
        heads_cached_max: 2,
        ..StoreConfig::default()
    }
}

/// Makes the users, their sessions and the group.
pub(crate) fn prepare(plan: &Plan) -> Setup {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the setup");
    rt.block_on(async {
        let engine = Arc::new(MemoryEngine::default());
        let store = Arc::new(LogStore::start(engine.clone(), store_config(plan)));
        let service = Service::new(
            store.clone(),
            Arc::new(NullNotifier),
            Arc::new(SimClock),
            core_config(plan),
        )
        .await
        .expect("the service starts");
        let mut users = BTreeMap::new();
        let mut sessions = Vec::new();
        for name in plan.users() {
            service
                .register(name, PASSWORD)
                .await
                .expect("registration");
            let (login, session) = service.login(name, PASSWORD, "sim").await.expect("login");
            users.insert(
                name.clone(),
                User {
                    id: login.user_id,
                    token: login.token,
                },
            );
            sessions.push(session);
        }
        let group = service
            .create_group(
                &sessions[0],
                CreateGroupRequest {
                    name: "everyone".into(),
                    members: plan.users().skip(1).cloned().collect(),
                    ..Default::default()
                },
            )
            .await
            .expect("the group");
        store.shutdown().await;
        let dummy_hash =
            pigeon_core::accounts::hash_password("dummy", core_config(plan).password_hash_cost)
                .expect("a password hash");
        Setup {
            engine,
            users,
            group: group.conversation_id,
            dummy_hash,
        }
    })
}
