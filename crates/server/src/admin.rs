//! The admin HTTP API: JSON under `/admin/v1/`, for the bearer token in
//! the `admin_token` setting, and its OpenAPI document at `/openapi.json`
//! (generated from the handlers below; a copy is kept in
//! `docs/openapi.json` and a test fails when they differ).
//!
//! Every request under `/admin` is checked for the token before routing,
//! so without it the answer is always 401 whatever the path or method.
//! Domain errors become `{"error":{"code":"USER_NOT_FOUND","message":..}}`
//! with an HTTP status chosen in one place, [`status_of`]. The operations
//! themselves are in `pigeon_core::admin_service`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use pigeon_core::admin_service::{AdminMessage, AdminNewGroup, AdminTarget, Page};
use pigeon_core::store::{GroupRecord, MemberRecord, UserRecord};
use pigeon_core::{CoreError, Service, accounts, groups};
use pigeon_gateway::{Gateway, Registry};
use pigeon_proto::ErrorCode;
use pigeon_proto::v1::{self, GroupInfo, GroupRole};
use serde::{Deserialize, Serialize};
use utoipa::openapi::OpenApi as Document;
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What the admin handlers need.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) service: Arc<Service>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) backend: Arc<crate::backend::Backend>,
    /// SHA-256 of the admin token, hex; `None` refuses every request.
    pub(crate) token_hash: Option<Arc<str>>,
    pub(crate) started: Instant,
}

impl AdminState {
    /// The hash to compare bearer tokens with, if admin access is on.
    pub(crate) fn token_hash(token: &str) -> Option<Arc<str>> {
        (!token.is_empty()).then(|| accounts::token_hash(token).into())
    }
}

/// The admin routes and `/openapi.json`.
pub(crate) fn router(state: AdminState) -> Router {
    let (api, document) = api();
    let document: Arc<str> = serde_json::to_string(&document)
        .expect("the OpenAPI document serialises")
        .into();
    let admin = api
        .route("/admin", any(unknown_route))
        .route("/admin/{*rest}", any(unknown_route))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state);
    admin.route(
        "/openapi.json",
        axum::routing::get(move || async move {
            (
                [(header::CONTENT_TYPE, "application/json")],
                document.to_string(),
            )
        }),
    )
}

/// The admin routes and the OpenAPI document generated from them.
pub(crate) fn api() -> (Router<AdminState>, Document) {
    let (router, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_user, list_users))
        .routes(routes!(get_user))
        .routes(routes!(disable_user))
        .routes(routes!(enable_user))
        .routes(routes!(reset_password))
        .routes(routes!(revoke_sessions))
        .routes(routes!(create_group))
        .routes(routes!(get_group))
        .routes(routes!(list_members, add_members))
        .routes(routes!(remove_member))
        .routes(routes!(dissolve_group))
        .routes(routes!(send_message))
        .routes(routes!(stats))
        .routes(routes!(list_flags))
        .routes(routes!(failed_deliveries))
        .routes(routes!(set_flag, delete_flag))
        .split_for_parts();
    add_common_responses(&mut document);
    require_one_target(&mut document);
    (router, document)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Pigeon admin API",
        description = "Administration of a Pigeon server: accounts, groups, messages as an account, statistics. Every request needs `Authorization: Bearer <admin_token>`; without it the answer is 401.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&BearerToken),
    security(("admin_token" = [])),
    components(schemas(ErrorBody)),
    tags(
        (name = "users", description = "Accounts"),
        (name = "groups", description = "Groups, acted on with the owner's authority"),
        (name = "messages", description = "Messages sent as an account"),
        (name = "server", description = "Server statistics"),
        (name = "flags", description = "Feature flags for gray release"),
        (name = "webhooks", description = "Webhook deliveries"),
    )
)]
struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut Document) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "admin_token",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// A message takes exactly one of `to_user` and `conversation_id`, which
/// the derived schema cannot say: it becomes all of itself and one of the
/// two required sets (a body with both matches both, so it is refused, as
/// the handler refuses it).
fn require_one_target(doc: &mut Document) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
    let Some(schemas) = doc.components.as_mut().map(|c| &mut c.schemas) else {
        return;
    };
    let Some(message) = schemas.remove("NewMessage") else {
        return;
    };
    // Present and not null (null is as good as absent to the handler).
    let given = |field: &str| {
        ObjectBuilder::new()
            .property(field, ObjectBuilder::new().schema_type(Type::String))
            .required(field)
    };
    let one_target = OneOfBuilder::new()
        .item(given("to_user"))
        .item(given("conversation_id"));
    let schema = AllOfBuilder::new().item(message).item(one_target).build();
    schemas.insert("NewMessage".into(), RefOr::T(Schema::AllOf(schema)));
}

/// Documents on every operation the answers every operation can give: 401
/// without the token, 400 for malformed input.
fn add_common_responses(doc: &mut Document) {
    use utoipa::openapi::{Ref, RefOr, ResponseBuilder, content::ContentBuilder};
    let response = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let takes_input =
                op.request_body.is_some() || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let responses = &mut op.responses.responses;
            responses.insert(
                "401".into(),
                response("UNAUTHENTICATED: no admin token, or a wrong one"),
            );
            if takes_input {
                responses
                    .entry("400".into())
                    .or_insert_with(|| response("INVALID_ARGUMENT and other input errors"));
            }
        }
    }
}

// ------------------------------------------------------------------ errors

/// An error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct ErrorDetail {
    /// The protocol's error code name without its `ERROR_CODE_` prefix,
    /// e.g. `USER_NOT_FOUND` (docs/PROTOCOL.md lists them).
    code: String,
    /// For a person; not for parsing.
    message: String,
}

/// A failed admin request.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

/// The HTTP status of each error code: the one mapping.
fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode as E;
    match code {
        E::Unauthenticated | E::InvalidToken | E::TokenExpired | E::TokenRevoked => {
            StatusCode::UNAUTHORIZED
        }
        E::Forbidden | E::AccountDisabled | E::RegistrationClosed => StatusCode::FORBIDDEN,
        E::UserNotFound | E::ConversationNotFound | E::MessageNotFound | E::UnknownRequest => {
            StatusCode::NOT_FOUND
        }
        E::UsernameTaken | E::GroupFull | E::WindowExpired | E::AlreadyAuthenticated => {
            StatusCode::CONFLICT
        }
        E::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        E::Busy | E::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        E::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        E::Internal | E::Unspecified => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let name = self.code.as_str_name();
        let body = ErrorBody {
            error: ErrorDetail {
                code: name.strip_prefix("ERROR_CODE_").unwrap_or(name).to_string(),
                message: self.message,
            },
        };
        let status = status_of(self.code);
        if status == StatusCode::UNAUTHORIZED {
            (
                status,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"pigeon-admin\"")],
                Json(body),
            )
                .into_response()
        } else {
            (status, Json(body)).into_response()
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let code = e.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "admin request failed");
            return ApiError::new(code, "internal error; see the server log");
        }
        ApiError::new(code, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, e.body_text())
    }
}

/// A JSON body whose rejection is an [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
struct ApiJson<T>(T);

/// Path parameters whose rejection is an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
struct ApiPath<T>(T);

/// Query parameters whose rejection is an [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
struct ApiQuery<T>(T);

type ApiResult<T> = Result<Json<T>, ApiError>;

// -------------------------------------------------------------------- auth

/// Lets a request through only with `Authorization: Bearer <admin_token>`.
async fn require_token(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if token_matches(state.token_hash.as_deref(), req.headers()) {
        next.run(req).await
    } else {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "send the admin token as `Authorization: Bearer <token>`",
        )
        .into_response()
    }
}

/// Compares hashes of the tokens in constant time, so the time taken says
/// nothing about how much of a guess was right (nor about the length).
fn token_matches(expected_hash: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected_hash else {
        return false;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
    else {
        return false;
    };
    let given = accounts::token_hash(given);
    constant_time_eq(given.as_bytes(), expected.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Both are hex SHA-256 digests: equal lengths, so only content varies.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn unknown_route() -> ApiError {
    ApiError::new(ErrorCode::UnknownRequest, "no such admin route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::UnknownRequest,
        "this admin route does not take that method",
    )
}

// ---------------------------------------------------------------- schemas

// Usernames are documented with the pattern of
// `pigeon_core::accounts::validate_username`.

/// An account to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    /// 3 to 32 characters of a-z, 0-9, `_`, `.`, `-`, starting with a
    /// letter or digit.
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{2,31}$", example = "newsbot")]
    username: String,
    /// 8 to 1024 bytes.
    #[schema(min_length = 8, max_length = 1024, example = "correct horse battery")]
    password: String,
}

/// An account.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct User {
    id: u64,
    username: String,
    /// Unix ms.
    created_at_ms: i64,
    /// Disabled accounts cannot log in or use their tokens.
    disabled: bool,
    /// Connections of this account open on this server now.
    online_connections: u64,
}

/// A page of accounts.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct UserPage {
    users: Vec<User>,
    /// Pass as `after_id` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after_id: Option<u64>,
}

/// Where a page starts and how long it is.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Only items with a user id above this (default 0: from the start).
    after_id: Option<u64>,
    /// Items per page: 1 to 1000 (larger values are clamped; default 100).
    #[param(maximum = 1000)]
    limit: Option<u32>,
}

/// A new password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    /// 8 to 1024 bytes.
    #[schema(min_length = 8, max_length = 1024, example = "a brand new password")]
    password: String,
}

/// Sessions revoked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct Revoked {
    /// Sessions that were live and are now revoked.
    revoked_sessions: u64,
}

/// Who may post in a group.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum PostPolicy {
    /// Every member.
    #[default]
    Everyone,
    /// Admins and the owner only.
    Admins,
}

/// Who may add members to a group.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum AddPolicy {
    /// Admins and the owner only.
    #[default]
    Admins,
    /// Every member.
    Everyone,
}

/// A group's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    post_policy: PostPolicy,
    add_policy: AddPolicy,
    /// The most members (0: the server's maximum, also the ceiling).
    max_members: u32,
}

/// A group to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    /// 1 to 128 bytes.
    #[schema(min_length = 1, max_length = 128, example = "Operations")]
    name: String,
    /// At most 2048 bytes.
    #[serde(default)]
    #[schema(max_length = 2048, example = "Announcements from the operators")]
    description: String,
    /// The owner's username.
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{2,31}$", example = "alice")]
    owner: String,
    /// Usernames of the other members (at most 1000).
    #[serde(default)]
    #[schema(max_items = 1000, example = json!(["bob"]))]
    members: Vec<String>,
    #[serde(default)]
    settings: Settings,
}

/// A group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct Group {
    id: u64,
    /// `g:<id>`, as in messages.
    conversation_id: String,
    name: String,
    description: String,
    settings: Settings,
    owner_id: u64,
    owner_username: String,
    member_count: u32,
    /// Read-diffused (above the server's large-group threshold).
    large: bool,
    /// Unix ms.
    created_at_ms: i64,
    dissolved: bool,
}

/// A member's role.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum Role {
    Owner,
    Admin,
    Member,
    /// No longer a member.
    None,
}

/// A group member.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct Member {
    user_id: u64,
    username: String,
    role: Role,
    /// Unix ms.
    joined_at_ms: i64,
}

/// A page of current members.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct MemberPage {
    members: Vec<Member>,
    /// Pass as `after_id` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after_id: Option<u64>,
}

/// Users to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Usernames {
    /// 1 to 1000 usernames.
    #[schema(min_items = 1, max_items = 1000, example = json!(["bob"]))]
    usernames: Vec<String>,
}

/// A membership change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct MembersChanged {
    group: Group,
    /// The members added or removed (already members are left out).
    members: Vec<Member>,
}

/// A text message to send as an account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewMessage {
    /// The sending account (a bot or system account).
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{2,31}$", example = "newsbot")]
    from: String,
    /// A direct conversation with this username; or give `conversation_id`.
    #[schema(pattern = "^[a-z0-9][a-z0-9_.-]{2,31}$", example = "alice")]
    to_user: Option<String>,
    /// A conversation id (`g:<id>` for a group); or give `to_user`.
    conversation_id: Option<String>,
    /// The text (at most `message_bytes_max` bytes).
    #[schema(min_length = 1, example = "Good morning")]
    text: String,
    /// Retries with the same id store the message once (1 to 64 bytes).
    #[schema(min_length = 1, max_length = 64, example = "news-2026-11-23")]
    client_msg_id: Option<String>,
}

/// A stored message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct Sent {
    conversation_id: String,
    conv_seq: u64,
    /// Unix ms.
    sent_at_ms: i64,
    /// The client_msg_id was used before: this is the first outcome and
    /// nothing new was stored.
    duplicate: bool,
}

/// Server statistics.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct Stats {
    /// Accounts ever created.
    users: u64,
    /// Groups ever created (dissolved ones included).
    groups: u64,
    /// Protocol connections open on this server.
    open_connections: u64,
    /// Group commits (one fsync each) since start; with PostgreSQL, write
    /// transactions committed by this node.
    store_commits: u64,
    /// Store jobs answered since start; with PostgreSQL, the same as
    /// `store_commits`.
    store_jobs: u64,
    /// Seconds since start.
    uptime_secs: u64,
}

/// A webhook delivery given up on after the attempt limit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct FailedDelivery {
    /// The delivery id (`X-Pigeon-Delivery`).
    id: u64,
    /// The endpoint's URL.
    endpoint: String,
    /// `message.created` or `push.needed`.
    event: String,
    /// The message it was about.
    conversation_id: String,
    conv_seq: u64,
    /// For push.needed: the recipient's user id (0: every offline member of a large group).
    recipient: u64,
    /// Attempts made.
    attempts: u32,
    /// Why the last attempt failed.
    last_error: String,
    /// When it was queued, Unix ms.
    created_at_ms: i64,
}

/// Failed deliveries, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct FailedDeliveries {
    deliveries: Vec<FailedDelivery>,
}

/// How many to list.
#[derive(Debug, Deserialize, IntoParams)]
struct LimitQuery {
    /// At most this many (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A feature flag.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct FlagView {
    /// `a-z 0-9 . _ -`, up to 64 bytes.
    #[schema(example = "new-composer")]
    name: String,
    /// Share of users it is on for, 0 to 100.
    #[schema(example = 10, minimum = 0, maximum = 100)]
    percent: u8,
    /// Users it is on for regardless of the percentage.
    allow: Vec<String>,
    /// Last change, Unix ms.
    updated_at_ms: i64,
}

/// A flag's settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FlagSetting {
    /// Share of users it is on for, 0 to 100.
    #[schema(example = 10, minimum = 0, maximum = 100)]
    percent: u8,
    /// Users it is on for regardless of the percentage.
    #[serde(default)]
    #[schema(example = json!(["alice"]))]
    allow: Vec<String>,
}

/// Every feature flag.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct FlagList {
    flags: Vec<FlagView>,
}

fn flag_view(f: pigeon_core::flags::Flag) -> FlagView {
    FlagView {
        name: f.name,
        percent: f.percent,
        allow: f.allow,
        updated_at_ms: f.updated_at_ms,
    }
}

// ------------------------------------------------------------- conversions

fn user_view(state: &AdminState, u: UserRecord) -> User {
    User {
        online_connections: state.registry.online(u.id) as u64,
        id: u.id,
        username: u.username,
        created_at_ms: u.created_at_ms,
        disabled: u.disabled,
    }
}

fn settings_view(s: Option<&v1::GroupSettings>) -> Settings {
    let s = s.cloned().unwrap_or_default();
    Settings {
        post_policy: match s.post_policy() {
            v1::PostPolicy::Everyone => PostPolicy::Everyone,
            v1::PostPolicy::Admins => PostPolicy::Admins,
        },
        add_policy: match s.add_policy() {
            v1::AddPolicy::Admins => AddPolicy::Admins,
            v1::AddPolicy::Everyone => AddPolicy::Everyone,
        },
        max_members: s.max_members,
    }
}

fn group_view(g: GroupInfo) -> Group {
    Group {
        id: groups::parse_group_id(&g.conversation_id).unwrap_or_default(),
        settings: settings_view(g.settings.as_ref()),
        conversation_id: g.conversation_id,
        name: g.name,
        description: g.description,
        owner_id: g.owner_id,
        owner_username: g.owner_username,
        member_count: g.member_count,
        large: g.large,
        created_at_ms: g.created_at_ms,
        dissolved: g.dissolved,
    }
}

fn member_view(m: &v1::Member) -> Member {
    Member {
        user_id: m.user_id,
        username: m.username.clone(),
        role: match m.role() {
            GroupRole::Owner => Role::Owner,
            GroupRole::Admin => Role::Admin,
            GroupRole::Member => Role::Member,
            GroupRole::None => Role::None,
        },
        joined_at_ms: m.joined_at_ms,
    }
}

fn member_record_view(m: &MemberRecord) -> Member {
    member_view(&m.member())
}

/// A group named by its number or its conversation id `g:<n>`.
fn group_id(raw: &str) -> Result<u64, ApiError> {
    let id = if raw.starts_with("g:") {
        groups::parse_group_id(raw)
    } else {
        groups::parse_group_id(&format!("g:{raw}"))
    };
    id.ok_or_else(|| CoreError::ConversationNotFound(raw.chars().take(64).collect()).into())
}

fn page_of<T, V>(page: Page<T>, view: impl Fn(T) -> V) -> (Vec<V>, Option<u64>) {
    (page.items.into_iter().map(view).collect(), page.next_after)
}

// --------------------------------------------------------------- handlers

/// Create an account (also when open registration is off).
#[utoipa::path(post, path = "/admin/v1/users", tag = "users", request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = User, links(
            ("GetUser" = (operation_id = "get_user", parameters(("username" = "$response.body#/username")))),
            ("DisableUser" = (operation_id = "disable_user", parameters(("username" = "$response.body#/username")))),
            ("EnableUser" = (operation_id = "enable_user", parameters(("username" = "$response.body#/username")))),
            ("ResetPassword" = (operation_id = "reset_password", parameters(("username" = "$response.body#/username")))),
            ("RevokeSessions" = (operation_id = "revoke_sessions", parameters(("username" = "$response.body#/username")))),
        )),
        (status = 409, description = "USERNAME_TAKEN", body = ErrorBody),
    ))]
async fn create_user(
    State(state): State<AdminState>,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let user = state
        .service
        .admin()
        .create_user(&req.username, &req.password)
        .await?;
    Ok((StatusCode::CREATED, Json(user_view(&state, user))))
}

/// List accounts by id, a page at a time.
#[utoipa::path(get, path = "/admin/v1/users", tag = "users", params(PageQuery),
    responses((status = 200, description = "A page of accounts", body = UserPage)))]
async fn list_users(
    State(state): State<AdminState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<UserPage> {
    let page = state
        .service
        .admin()
        .list_users(q.after_id.unwrap_or(0), q.limit.unwrap_or(0) as usize)
        .await?;
    let (users, next_after_id) = page_of(page, |u| user_view(&state, u));
    Ok(Json(UserPage {
        users,
        next_after_id,
    }))
}

/// Get an account.
#[utoipa::path(get, path = "/admin/v1/users/{username}", tag = "users",
    params(("username" = String, Path, description = "The account's username", example = "alice")),
    responses(
        (status = 200, description = "The account", body = User),
        (status = 404, description = "USER_NOT_FOUND", body = ErrorBody),
    ))]
async fn get_user(
    State(state): State<AdminState>,
    ApiPath(username): ApiPath<String>,
) -> ApiResult<User> {
    let user = state.service.admin().user(&username).await?;
    Ok(Json(user_view(&state, user)))
}

/// Disable an account.
///
/// Its logins and tokens are refused with ACCOUNT_DISABLED, its sessions
/// revoked and its open connections closed.
#[utoipa::path(post, path = "/admin/v1/users/{username}/disable", tag = "users",
    params(("username" = String, Path, description = "The account's username", example = "alice")),
    responses(
        (status = 200, description = "Disabled", body = User),
        (status = 404, description = "USER_NOT_FOUND", body = ErrorBody),
    ))]
async fn disable_user(
    State(state): State<AdminState>,
    ApiPath(username): ApiPath<String>,
) -> ApiResult<User> {
    let user = state.service.admin().disable(&username).await?;
    Ok(Json(user_view(&state, user)))
}

/// Enable an account again (its devices log in again).
#[utoipa::path(post, path = "/admin/v1/users/{username}/enable", tag = "users",
    params(("username" = String, Path, description = "The account's username", example = "alice")),
    responses(
        (status = 200, description = "Enabled", body = User),
        (status = 404, description = "USER_NOT_FOUND", body = ErrorBody),
    ))]
async fn enable_user(
    State(state): State<AdminState>,
    ApiPath(username): ApiPath<String>,
) -> ApiResult<User> {
    let user = state.service.admin().enable(&username).await?;
    Ok(Json(user_view(&state, user)))
}

/// Set a new password.
///
/// Sessions stay valid: revoke them too if the old password may have
/// leaked.
#[utoipa::path(post, path = "/admin/v1/users/{username}/password", tag = "users",
    params(("username" = String, Path, description = "The account's username", example = "alice")),
    request_body = NewPassword,
    responses(
        (status = 200, description = "Changed", body = User),
        (status = 404, description = "USER_NOT_FOUND", body = ErrorBody),
    ))]
async fn reset_password(
    State(state): State<AdminState>,
    ApiPath(username): ApiPath<String>,
    ApiJson(req): ApiJson<NewPassword>,
) -> ApiResult<User> {
    let user = state
        .service
        .admin()
        .reset_password(&username, &req.password)
        .await?;
    Ok(Json(user_view(&state, user)))
}

/// Revoke every session of an account and close its connections.
#[utoipa::path(post, path = "/admin/v1/users/{username}/revoke-sessions", tag = "users",
    params(("username" = String, Path, description = "The account's username", example = "alice")),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 404, description = "USER_NOT_FOUND", body = ErrorBody),
    ))]
async fn revoke_sessions(
    State(state): State<AdminState>,
    ApiPath(username): ApiPath<String>,
) -> ApiResult<Revoked> {
    let n = state.service.admin().revoke_sessions(&username).await?;
    Ok(Json(Revoked {
        revoked_sessions: n as u64,
    }))
}

/// Create a group for an owner.
///
/// Its members hear of it as if the owner had created it.
#[utoipa::path(post, path = "/admin/v1/groups", tag = "groups", request_body = NewGroup,
    responses(
        (status = 201, description = "Created", body = Group, links(
            ("GetGroup" = (operation_id = "get_group", parameters(("id" = "$response.body#/id")))),
            ("ListMembers" = (operation_id = "list_members", parameters(("id" = "$response.body#/id")))),
            ("AddMembers" = (operation_id = "add_members", parameters(("id" = "$response.body#/id")))),
            ("RemoveOwner" = (operation_id = "remove_member", parameters(("id" = "$response.body#/id"), ("username" = "$response.body#/owner_username")))),
            ("DissolveGroup" = (operation_id = "dissolve_group", parameters(("id" = "$response.body#/id")))),
        )),
        (status = 404, description = "USER_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "GROUP_FULL", body = ErrorBody),
    ))]
async fn create_group(
    State(state): State<AdminState>,
    ApiJson(req): ApiJson<NewGroup>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    let settings = v1::GroupSettings {
        post_policy: match req.settings.post_policy {
            PostPolicy::Everyone => v1::PostPolicy::Everyone,
            PostPolicy::Admins => v1::PostPolicy::Admins,
        } as i32,
        add_policy: match req.settings.add_policy {
            AddPolicy::Admins => v1::AddPolicy::Admins,
            AddPolicy::Everyone => v1::AddPolicy::Everyone,
        } as i32,
        max_members: req.settings.max_members,
    };
    let info = state
        .service
        .admin()
        .create_group(AdminNewGroup {
            owner: req.owner,
            name: req.name,
            description: req.description,
            members: req.members,
            settings,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(group_view(info))))
}

/// Get a group.
#[utoipa::path(get, path = "/admin/v1/groups/{id}", tag = "groups",
    params(("id" = String, Path, description = "The group's number or conversation id `g:<n>`", example = "1")),
    responses(
        (status = 200, description = "The group", body = Group),
        (status = 404, description = "CONVERSATION_NOT_FOUND", body = ErrorBody),
    ))]
async fn get_group(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Group> {
    let group: GroupRecord = state.service.admin().group(group_id(&id)?).await?;
    Ok(Json(group_view(group.info())))
}

/// List a group's current members by user id, a page at a time.
#[utoipa::path(get, path = "/admin/v1/groups/{id}/members", tag = "groups",
    params(("id" = String, Path, description = "The group's number or conversation id `g:<n>`", example = "1"), PageQuery),
    responses(
        (status = 200, description = "A page of members", body = MemberPage),
        (status = 404, description = "CONVERSATION_NOT_FOUND", body = ErrorBody),
    ))]
async fn list_members(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<MemberPage> {
    let page = state
        .service
        .admin()
        .members(
            group_id(&id)?,
            q.after_id.unwrap_or(0),
            q.limit.unwrap_or(0) as usize,
        )
        .await?;
    let (members, next_after_id) = page_of(page, |m| member_record_view(&m));
    Ok(Json(MemberPage {
        members,
        next_after_id,
    }))
}

/// Add members to a group, with the owner's authority.
#[utoipa::path(post, path = "/admin/v1/groups/{id}/members", tag = "groups",
    params(("id" = String, Path, description = "The group's number or conversation id `g:<n>`", example = "1")),
    request_body = Usernames,
    responses(
        (status = 200, description = "Added", body = MembersChanged),
        (status = 403, description = "FORBIDDEN: the group was dissolved", body = ErrorBody),
        (status = 404, description = "CONVERSATION_NOT_FOUND or USER_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "GROUP_FULL", body = ErrorBody),
    ))]
async fn add_members(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<Usernames>,
) -> ApiResult<MembersChanged> {
    let out = state
        .service
        .admin()
        .add_members(group_id(&id)?, &req.usernames)
        .await?;
    Ok(Json(MembersChanged {
        group: group_view(out.group.unwrap_or_default()),
        members: out.added.iter().map(member_view).collect(),
    }))
}

/// Remove a member (not the owner) from a group, with the owner's authority.
#[utoipa::path(delete, path = "/admin/v1/groups/{id}/members/{username}", tag = "groups",
    params(
        ("id" = String, Path, description = "The group's number or conversation id `g:<n>`", example = "1"),
        ("username" = String, Path, description = "The member's username", example = "bob"),
    ),
    responses(
        (status = 200, description = "Removed", body = MembersChanged),
        (status = 403, description = "FORBIDDEN: the owner, or a dissolved group", body = ErrorBody),
        (status = 404, description = "CONVERSATION_NOT_FOUND or USER_NOT_FOUND", body = ErrorBody),
    ))]
async fn remove_member(
    State(state): State<AdminState>,
    ApiPath((id, username)): ApiPath<(String, String)>,
) -> ApiResult<MembersChanged> {
    let out = state
        .service
        .admin()
        .remove_member(group_id(&id)?, &username)
        .await?;
    Ok(Json(MembersChanged {
        group: group_view(out.group.unwrap_or_default()),
        members: out.removed.iter().map(member_view).collect(),
    }))
}

/// Dissolve a group, with the owner's authority.
#[utoipa::path(post, path = "/admin/v1/groups/{id}/dissolve", tag = "groups",
    params(("id" = String, Path, description = "The group's number or conversation id `g:<n>`", example = "1")),
    responses(
        (status = 200, description = "Dissolved", body = Group),
        (status = 403, description = "FORBIDDEN: dissolved already", body = ErrorBody),
        (status = 404, description = "CONVERSATION_NOT_FOUND", body = ErrorBody),
    ))]
async fn dissolve_group(
    State(state): State<AdminState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Group> {
    let info = state.service.admin().dissolve(group_id(&id)?).await?;
    Ok(Json(group_view(info)))
}

/// Send a text message as an account.
///
/// This is how bots and system accounts post. The account's own rules
/// apply: group membership, post policy, blocks.
#[utoipa::path(post, path = "/admin/v1/messages", tag = "messages", request_body = NewMessage,
    responses(
        (status = 200, description = "Stored (or stored before, see `duplicate`)", body = Sent),
        (status = 403, description = "FORBIDDEN or ACCOUNT_DISABLED", body = ErrorBody),
        (status = 404, description = "USER_NOT_FOUND or CONVERSATION_NOT_FOUND", body = ErrorBody),
        (status = 413, description = "MESSAGE_TOO_LARGE", body = ErrorBody),
    ))]
async fn send_message(
    State(state): State<AdminState>,
    ApiJson(req): ApiJson<NewMessage>,
) -> ApiResult<Sent> {
    let to = match (req.to_user, req.conversation_id) {
        (Some(user), None) => AdminTarget::User(user),
        (None, Some(conv)) => AdminTarget::Conversation(conv),
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                "give exactly one of to_user and conversation_id",
            ));
        }
    };
    let sent = state
        .service
        .admin()
        .send(AdminMessage {
            from: req.from,
            to,
            text: req.text,
            client_msg_id: req.client_msg_id,
        })
        .await?;
    Ok(Json(Sent {
        conversation_id: sent.conversation_id,
        conv_seq: sent.conv_seq,
        sent_at_ms: sent.sent_at_ms,
        duplicate: sent.duplicate,
    }))
}

/// Get server statistics.
#[utoipa::path(get, path = "/admin/v1/stats", tag = "server",
    responses((status = 200, description = "Statistics", body = Stats)))]
async fn stats(State(state): State<AdminState>) -> ApiResult<Stats> {
    let totals = state.service.admin().totals().await?;
    let (store_commits, store_jobs) = state.backend.counters();
    Ok(Json(Stats {
        users: totals.users,
        groups: totals.groups,
        open_connections: state.gateway.open_connections() as u64,
        store_commits,
        store_jobs,
        uptime_secs: state.started.elapsed().as_secs(),
    }))
}

/// List webhook deliveries that failed for good, with the reason.
#[utoipa::path(get, path = "/admin/v1/webhooks/failed", tag = "webhooks", params(LimitQuery),
    responses((status = 200, description = "Failed deliveries, newest first", body = FailedDeliveries)))]
async fn failed_deliveries(
    State(state): State<AdminState>,
    ApiQuery(q): ApiQuery<LimitQuery>,
) -> ApiResult<FailedDeliveries> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let failed = state
        .backend
        .store()
        .deliveries_failed(limit)
        .await
        .map_err(CoreError::from)?;
    Ok(Json(FailedDeliveries {
        deliveries: failed
            .into_iter()
            .map(|d| FailedDelivery {
                id: d.id,
                endpoint: d.endpoint,
                event: d.kind.as_str().to_string(),
                conversation_id: d.conversation_id,
                conv_seq: d.conv_seq,
                recipient: d.recipient,
                attempts: d.attempts,
                last_error: d.last_error,
                created_at_ms: d.created_at_ms,
            })
            .collect(),
    }))
}

/// List the feature flags.
#[utoipa::path(get, path = "/admin/v1/flags", tag = "flags",
    responses((status = 200, description = "Every flag", body = FlagList)))]
async fn list_flags(State(state): State<AdminState>) -> ApiResult<FlagList> {
    let flags = state.service.list_flags().await?;
    Ok(Json(FlagList {
        flags: flags.into_iter().map(flag_view).collect(),
    }))
}

/// Create or change a feature flag.
///
/// It is on for a user if they are on the allow-list, or if their stable
/// bucket for this flag (0 to 99) is below `percent`; every node decides the
/// same way. Users' devices get a FlagsChanged event with their new set.
#[utoipa::path(put, path = "/admin/v1/flags/{name}", tag = "flags",
    params(("name" = String, Path, description = "The flag's name", example = "new-composer")),
    request_body = FlagSetting,
    responses(
        (status = 200, description = "The flag as stored", body = FlagView),
    ))]
async fn set_flag(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<FlagSetting>,
) -> ApiResult<FlagView> {
    let flag = state
        .service
        .set_flag(&name, Some((req.percent, req.allow)))
        .await?;
    Ok(Json(flag_view(flag.expect("a flag was set"))))
}

/// Remove a feature flag (it is off for everyone).
#[utoipa::path(delete, path = "/admin/v1/flags/{name}", tag = "flags",
    params(("name" = String, Path, description = "The flag's name", example = "new-composer")),
    responses((status = 200, description = "Removed (or was not there)", body = FlagList)))]
async fn delete_flag(
    State(state): State<AdminState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<FlagList> {
    pigeon_core::flags::validate(&name, 0, &[])?;
    state.service.set_flag(&name, None).await?;
    let flags = state.service.list_flags().await?;
    Ok(Json(FlagList {
        flags: flags.into_iter().map(flag_view).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only `Bearer <the token>` passes; no token configured lets nothing
    /// through.
    #[test]
    fn bearer_token_checks() {
        let expected = AdminState::token_hash("0123456789abcdef-token");
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        let ok = |v: &str| token_matches(expected.as_deref(), &headers(v));
        assert!(ok("Bearer 0123456789abcdef-token"));
        assert!(ok("bearer 0123456789abcdef-token"));
        assert!(!ok("Bearer 0123456789abcdef-tokeN"));
        assert!(!ok("Bearer 0123456789abcdef"));
        assert!(!ok("Basic 0123456789abcdef-token"));
        assert!(!ok("0123456789abcdef-token"));
        assert!(!token_matches(expected.as_deref(), &HeaderMap::new()));
        assert!(!token_matches(
            AdminState::token_hash("").as_deref(),
            &headers("Bearer ")
        ));
    }

    /// Group ids: a number or its conversation id; nothing else.
    #[test]
    fn group_ids() {
        assert_eq!(group_id("7").unwrap(), 7);
        assert_eq!(group_id("g:7").unwrap(), 7);
        for bad in ["", "0", "07", "g:", "x", "-1", "g:g:1", "d:1:2"] {
            assert!(group_id(bad).is_err(), "{bad}");
        }
    }

    /// Every code maps to a status, and only server faults to 5xx.
    #[test]
    fn statuses() {
        assert_eq!(status_of(ErrorCode::UserNotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            status_of(ErrorCode::InvalidArgument),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(ErrorCode::Unauthenticated),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status_of(ErrorCode::UsernameTaken), StatusCode::CONFLICT);
        assert_eq!(status_of(ErrorCode::AccountDisabled), StatusCode::FORBIDDEN);
        for code in [ErrorCode::Internal, ErrorCode::ShuttingDown] {
            assert!(status_of(code).is_server_error());
        }
    }
}
