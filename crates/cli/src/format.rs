//! The JSON lines the CLI prints: one object per line, fields in a stable order.
//!
//! Event lines (`sync`, `listen`):
//! - a message: `{"seq":N,"type":"message","conversation_id":"d:1:2","conv_seq":N,
//!   "from":"alice","from_id":N,"device_id":N,"client_msg_id":"..","sent_at_ms":N,"text":".."}`,
//!   where `device_id` and `client_msg_id` appear only on the sender's own
//!   copies (the server tells other users neither);
//!   plus `"payload_b64"` (standard base64) and `"payload_type"` only when the
//!   message has a payload;
//!   plus `"edited_at_ms"` once edited; a recalled message has no `text` (nor
//!   payload) and `"recalled":true` instead. Group messages look the same,
//!   with a `"g:.."` conversation id;
//! - a read marker: `{"seq":N,"type":"read_marker","conversation_id":"..","read_up_to":N}`;
//! - a group change: `{"seq":N,"type":"group_change","conversation_id":"g:..","kind":K,
//!   "actor":"alice","actor_id":N,"members":[{"user_id":N,"username":"..","role":R}],"group":G}`
//!   with K one of `created members_added members_removed member_left updated
//!   role_changed ownership_transferred dissolved`, R one of `none member admin
//!   owner`, and G a group object (below) or null;
//! - a receipt: `{"seq":N,"type":"receipt","conversation_id":"..","user":"..","user_id":N,
//!   "kind":"delivered|read","up_to":N}`;
//! - a receipt summary: `{"seq":N,"type":"receipt_summary","conversation_id":"..","conv_seq":N,
//!   "delivered_count":N,"read_count":N,"member_count":N}`;
//! - `{"seq":N,"type":"message_recalled","conversation_id":"..","conv_seq":N}`;
//! - `{"seq":N,"type":"message_edited","conversation_id":"..","conv_seq":N,"text":"..",
//!   "edited_at_ms":N}` (plus the payload fields as for messages);
//! - `{"seq":N,"type":"message_deleted","conversation_id":"..","conv_seq":N}`;
//! - `{"seq":N,"type":"block_changed","user":"..","user_id":N,"blocked":B}`;
//! - a kind this build does not know: `{"seq":N,"type":"unknown"}`.
//!
//! Events from a large group's shared log have `"seq":0` and carry their
//! position there as `"group_seq":N` after `seq`.
//!
//! `listen` also prints the pushes that are not stored:
//! `{"type":"presence","user":"..","user_id":N,"state":"online|offline|unknown","last_seen_ms":N}`
//! and `{"type":"typing","conversation_id":"..","user":"..","user_id":N,"typing":B}`.
//!
//! A group object: `{"conversation_id":"g:..","name":"..","description":"..","owner":"..",
//! "owner_id":N,"member_count":N,"large":B,"post_policy":"everyone|admins",
//! "add_policy":"admins|everyone","max_members":N,"created_at_ms":N,"dissolved":B}`.
//!
//! History lines are the message object alone (no `seq`/`type`); conversation
//! lines carry one as `last_message`, and for groups the group object and
//! `my_role`. Command results are documented at each function.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pigeon_client::v1;
use serde::Serialize;

/// Text and payload of a message or an edit.
#[derive(Serialize)]
struct ContentJson<'a> {
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_type: Option<&'a str>,
}

impl<'a> ContentJson<'a> {
    fn new(content: Option<&'a v1::Content>) -> Self {
        let (text, payload, payload_type) = match content {
            Some(c) => (
                c.text.as_str(),
                c.payload.as_slice(),
                c.payload_type.as_str(),
            ),
            None => ("", &[][..], ""),
        };
        let has_payload = !payload.is_empty();
        ContentJson {
            text,
            payload_b64: has_payload.then(|| BASE64.encode(payload)),
            payload_type: has_payload.then_some(payload_type),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct MessageJson<'a> {
    conversation_id: &'a str,
    conv_seq: u64,
    from: &'a str,
    from_id: u64,
    /// Only on the sender's own copies (other users are not told).
    #[serde(skip_serializing_if = "is_zero_u64")]
    device_id: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    client_msg_id: &'a str,
    sent_at_ms: i64,
    /// None once recalled: the line says `"recalled":true` instead.
    #[serde(flatten)]
    content: Option<ContentJson<'a>>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    edited_at_ms: i64,
    #[serde(skip_serializing_if = "is_false")]
    recalled: bool,
}

impl<'a> MessageJson<'a> {
    fn new(m: &'a v1::Message) -> Self {
        MessageJson {
            conversation_id: &m.conversation_id,
            conv_seq: m.conv_seq,
            from: &m.sender_username,
            from_id: m.sender_id,
            device_id: m.sender_device_id,
            client_msg_id: &m.client_msg_id,
            sent_at_ms: m.sent_at_ms,
            content: (!m.recalled).then(|| ContentJson::new(m.content.as_ref())),
            edited_at_ms: m.edited_at_ms,
            recalled: m.recalled,
        }
    }
}

/// `none`, `member`, `admin`, `owner` (`unknown` for a number this build does not know).
pub fn role_label(role: i32) -> &'static str {
    match v1::GroupRole::try_from(role) {
        Ok(v1::GroupRole::None) => "none",
        Ok(v1::GroupRole::Member) => "member",
        Ok(v1::GroupRole::Admin) => "admin",
        Ok(v1::GroupRole::Owner) => "owner",
        Err(_) => "unknown",
    }
}

fn change_kind_label(kind: i32) -> &'static str {
    use v1::GroupChangeKind as K;
    match K::try_from(kind) {
        Ok(K::Created) => "created",
        Ok(K::MembersAdded) => "members_added",
        Ok(K::MembersRemoved) => "members_removed",
        Ok(K::MemberLeft) => "member_left",
        Ok(K::Updated) => "updated",
        Ok(K::RoleChanged) => "role_changed",
        Ok(K::OwnershipTransferred) => "ownership_transferred",
        Ok(K::Dissolved) => "dissolved",
        Ok(K::Unspecified) | Err(_) => "unknown",
    }
}

fn post_policy_label(policy: i32) -> &'static str {
    match v1::PostPolicy::try_from(policy) {
        Ok(v1::PostPolicy::Everyone) => "everyone",
        Ok(v1::PostPolicy::Admins) => "admins",
        Err(_) => "unknown",
    }
}

fn add_policy_label(policy: i32) -> &'static str {
    match v1::AddPolicy::try_from(policy) {
        Ok(v1::AddPolicy::Admins) => "admins",
        Ok(v1::AddPolicy::Everyone) => "everyone",
        Err(_) => "unknown",
    }
}

fn receipt_kind_label(kind: i32) -> &'static str {
    match v1::ReceiptKind::try_from(kind) {
        Ok(v1::ReceiptKind::Delivered) => "delivered",
        Ok(v1::ReceiptKind::Read) => "read",
        Ok(v1::ReceiptKind::Unspecified) | Err(_) => "unknown",
    }
}

fn presence_label(state: i32) -> &'static str {
    match v1::PresenceState::try_from(state) {
        Ok(v1::PresenceState::Online) => "online",
        Ok(v1::PresenceState::Offline) => "offline",
        Ok(v1::PresenceState::Unknown) | Err(_) => "unknown",
    }
}

#[derive(Serialize)]
struct GroupJson<'a> {
    conversation_id: &'a str,
    name: &'a str,
    description: &'a str,
    owner: &'a str,
    owner_id: u64,
    member_count: u32,
    large: bool,
    post_policy: &'static str,
    add_policy: &'static str,
    max_members: u32,
    created_at_ms: i64,
    dissolved: bool,
}

impl<'a> GroupJson<'a> {
    fn new(g: &'a v1::GroupInfo) -> Self {
        let settings = g.settings.unwrap_or_default();
        GroupJson {
            conversation_id: &g.conversation_id,
            name: &g.name,
            description: &g.description,
            owner: &g.owner_username,
            owner_id: g.owner_id,
            member_count: g.member_count,
            large: g.large,
            post_policy: post_policy_label(settings.post_policy),
            add_policy: add_policy_label(settings.add_policy),
            max_members: settings.max_members,
            created_at_ms: g.created_at_ms,
            dissolved: g.dissolved,
        }
    }
}

/// A member in an event: who, and their role.
#[derive(Serialize)]
struct MemberRefJson<'a> {
    user_id: u64,
    username: &'a str,
    role: &'static str,
}

impl<'a> MemberRefJson<'a> {
    fn new(m: &'a v1::Member) -> Self {
        MemberRefJson {
            user_id: m.user_id,
            username: &m.username,
            role: role_label(m.role),
        }
    }
}

/// A member in a listing: who, their role, since when.
#[derive(Serialize)]
struct MemberJson<'a> {
    user_id: u64,
    username: &'a str,
    role: &'static str,
    joined_at_ms: i64,
}

impl<'a> MemberJson<'a> {
    fn new(m: &'a v1::Member) -> Self {
        MemberJson {
            user_id: m.user_id,
            username: &m.username,
            role: role_label(m.role),
            joined_at_ms: m.joined_at_ms,
        }
    }
}

#[derive(Serialize)]
struct EventHead {
    seq: u64,
    /// Only for events from a large group's shared log (their `seq` is 0).
    #[serde(skip_serializing_if = "is_zero_u64")]
    group_seq: u64,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct MessageEventJson<'a> {
    #[serde(flatten)]
    head: EventHead,
    #[serde(flatten)]
    message: MessageJson<'a>,
}

#[derive(Serialize)]
struct ReadMarkerEventJson<'a> {
    #[serde(flatten)]
    head: EventHead,
    conversation_id: &'a str,
    read_up_to: u64,
}

#[derive(Serialize)]
struct GroupChangeEventJson<'a> {
    #[serde(flatten)]
    head: EventHead,
    conversation_id: &'a str,
    kind: &'static str,
    actor: &'a str,
    actor_id: u64,
    members: Vec<MemberRefJson<'a>>,
    group: Option<GroupJson<'a>>,
}

#[derive(Serialize)]
struct ReceiptEventJson<'a> {
    #[serde(flatten)]
    head: EventHead,
    conversation_id: &'a str,
    user: &'a str,
    user_id: u64,
    kind: &'static str,
    up_to: u64,
}

#[derive(Serialize)]
struct ReceiptSummaryJson<'a> {
    conversation_id: &'a str,
    conv_seq: u64,
    delivered_count: u32,
    read_count: u32,
    member_count: u32,
}

impl<'a> ReceiptSummaryJson<'a> {
    fn new(r: &'a v1::ReceiptSummary) -> Self {
        ReceiptSummaryJson {
            conversation_id: &r.conversation_id,
            conv_seq: r.conv_seq,
            delivered_count: r.delivered_count,
            read_count: r.read_count,
            member_count: r.member_count,
        }
    }
}

#[derive(Serialize)]
struct ReceiptSummaryEventJson<'a> {
    #[serde(flatten)]
    head: EventHead,
    #[serde(flatten)]
    summary: ReceiptSummaryJson<'a>,
}

/// A message in a conversation, by position (recalled, deleted, recall and delete results).
#[derive(Serialize)]
struct MessageRefJson<'a> {
    conversation_id: &'a str,
    conv_seq: u64,
}

#[derive(Serialize)]
struct MessageRefEventJson<'a> {
    #[serde(flatten)]
    head: EventHead,
    #[serde(flatten)]
    message: MessageRefJson<'a>,
}

#[derive(Serialize)]
struct MessageEditedEventJson<'a> {
    #[serde(flatten)]
    head: EventHead,
    conversation_id: &'a str,
    conv_seq: u64,
    #[serde(flatten)]
    content: ContentJson<'a>,
    edited_at_ms: i64,
}

#[derive(Serialize)]
struct BlockJson<'a> {
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<u64>,
    blocked: bool,
}

#[derive(Serialize)]
struct FlagsChangedEventJson<'a> {
    #[serde(flatten)]
    head: EventHead,
    enabled: &'a [String],
}

#[derive(Serialize)]
struct BlockChangedEventJson<'a> {
    #[serde(flatten)]
    head: EventHead,
    #[serde(flatten)]
    block: BlockJson<'a>,
}

#[derive(Serialize)]
struct PresenceJson<'a> {
    user: &'a str,
    user_id: u64,
    state: &'static str,
    last_seen_ms: i64,
}

impl<'a> PresenceJson<'a> {
    fn new(p: &'a v1::Presence) -> Self {
        PresenceJson {
            user: &p.username,
            user_id: p.user_id,
            state: presence_label(p.state),
            last_seen_ms: p.last_seen_ms,
        }
    }
}

/// A line for a push, which has no seq.
#[derive(Serialize)]
struct PushJson<T> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize)]
struct TypingJson<'a> {
    conversation_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<u64>,
    typing: bool,
}

#[derive(Serialize)]
struct ConversationJson<'a> {
    conversation_id: &'a str,
    peer_user_id: u64,
    peer_username: &'a str,
    unread_count: u64,
    read_up_to: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<GroupJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    my_role: Option<&'static str>,
    last_message: Option<MessageJson<'a>>,
}

#[derive(Serialize)]
struct GroupWithRoleJson<'a> {
    #[serde(flatten)]
    group: GroupJson<'a>,
    my_role: &'static str,
}

#[derive(Serialize)]
struct GroupWithMembersJson<'a> {
    #[serde(flatten)]
    group: GroupJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    added: Option<Vec<MemberJson<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<Vec<MemberJson<'a>>>,
}

#[derive(Serialize)]
struct GroupEndJson<'a> {
    conversation_id: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    left: bool,
    #[serde(skip_serializing_if = "is_false")]
    dissolved: bool,
}

#[derive(Serialize)]
struct MessageDoneJson<'a> {
    #[serde(flatten)]
    message: MessageRefJson<'a>,
    #[serde(skip_serializing_if = "is_false")]
    recalled: bool,
    #[serde(skip_serializing_if = "is_false")]
    deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited_at_ms: Option<i64>,
}

#[derive(Serialize)]
struct ReadJson {
    read_up_to: u64,
    unread_count: u64,
}

#[derive(Serialize)]
struct PrivacyJson {
    hide_presence: bool,
}

#[derive(Serialize)]
struct UserJson<'a> {
    user: &'a str,
}

#[derive(Serialize)]
struct AckJson<'a> {
    conversation_id: &'a str,
    conv_seq: u64,
    sent_at_ms: i64,
    duplicate: bool,
}

#[derive(Serialize)]
struct RegisteredJson<'a> {
    user_id: u64,
    username: &'a str,
}

#[derive(Serialize)]
struct LoggedInJson {
    user_id: u64,
    device_id: u64,
    expires_at_ms: i64,
}

fn to_line(value: &impl Serialize) -> String {
    // These structs hold only strings and numbers, which always serialize.
    serde_json::to_string(value).expect("plain structs serialize to JSON")
}

/// One sync-log event as a JSON line (see the module docs).
pub fn event_json(event: &v1::Event) -> String {
    use v1::event::Kind;
    let head = |kind| EventHead {
        seq: event.seq,
        group_seq: event.group_seq,
        kind,
    };
    let message_ref = |conversation_id, conv_seq| MessageRefJson {
        conversation_id,
        conv_seq,
    };
    match &event.kind {
        Some(Kind::Message(m)) => to_line(&MessageEventJson {
            head: head("message"),
            message: MessageJson::new(m),
        }),
        Some(Kind::ReadMarker(r)) => to_line(&ReadMarkerEventJson {
            head: head("read_marker"),
            conversation_id: &r.conversation_id,
            read_up_to: r.read_up_to,
        }),
        Some(Kind::GroupChange(c)) => to_line(&GroupChangeEventJson {
            head: head("group_change"),
            conversation_id: &c.conversation_id,
            kind: change_kind_label(c.kind),
            actor: &c.actor_username,
            actor_id: c.actor_id,
            members: c.members.iter().map(MemberRefJson::new).collect(),
            group: c.group.as_ref().map(GroupJson::new),
        }),
        Some(Kind::Receipt(r)) => to_line(&ReceiptEventJson {
            head: head("receipt"),
            conversation_id: &r.conversation_id,
            user: &r.username,
            user_id: r.user_id,
            kind: receipt_kind_label(r.kind),
            up_to: r.up_to,
        }),
        Some(Kind::ReceiptSummary(r)) => to_line(&ReceiptSummaryEventJson {
            head: head("receipt_summary"),
            summary: ReceiptSummaryJson::new(r),
        }),
        Some(Kind::MessageRecalled(r)) => to_line(&MessageRefEventJson {
            head: head("message_recalled"),
            message: message_ref(&r.conversation_id, r.conv_seq),
        }),
        Some(Kind::MessageEdited(e)) => to_line(&MessageEditedEventJson {
            head: head("message_edited"),
            conversation_id: &e.conversation_id,
            conv_seq: e.conv_seq,
            content: ContentJson::new(e.content.as_ref()),
            edited_at_ms: e.edited_at_ms,
        }),
        Some(Kind::MessageDeleted(d)) => to_line(&MessageRefEventJson {
            head: head("message_deleted"),
            message: message_ref(&d.conversation_id, d.conv_seq),
        }),
        Some(Kind::BlockChanged(b)) => to_line(&BlockChangedEventJson {
            head: head("block_changed"),
            block: BlockJson {
                user: &b.username,
                user_id: Some(b.user_id),
                blocked: b.blocked,
            },
        }),
        Some(Kind::FlagsChanged(f)) => to_line(&FlagsChangedEventJson {
            head: head("flags_changed"),
            enabled: &f.enabled,
        }),
        None => to_line(&head("unknown")),
    }
}

/// A presence push as `listen` prints it:
/// `{"type":"presence","user","user_id","state","last_seen_ms"}`.
pub fn presence_push_json(p: &v1::Presence) -> String {
    to_line(&PushJson {
        kind: "presence",
        body: PresenceJson::new(p),
    })
}

/// A typing push as `listen` prints it:
/// `{"type":"typing","conversation_id","user","user_id","typing"}`.
pub fn typing_push_json(t: &v1::TypingPush) -> String {
    to_line(&PushJson {
        kind: "typing",
        body: TypingJson {
            conversation_id: &t.conversation_id,
            user: Some(&t.username),
            user_id: Some(t.user_id),
            typing: t.typing,
        },
    })
}

/// A timeline message as a JSON line (history).
pub fn message_json(message: &v1::Message) -> String {
    to_line(&MessageJson::new(message))
}

/// A conversation summary as a JSON line; `last_message` is null when
/// absent; a group conversation also has `group` and `my_role`.
pub fn conversation_json(c: &v1::ConversationSummary) -> String {
    to_line(&ConversationJson {
        conversation_id: &c.conversation_id,
        peer_user_id: c.peer_user_id,
        peer_username: &c.peer_username,
        unread_count: c.unread_count,
        read_up_to: c.read_up_to,
        group: c.group.as_ref().map(GroupJson::new),
        my_role: c.group.as_ref().map(|_| role_label(c.my_role)),
        last_message: c.last_message.as_ref().map(MessageJson::new),
    })
}

/// A group object (see the module docs).
pub fn group_json(g: &v1::GroupInfo) -> String {
    to_line(&GroupJson::new(g))
}

/// `group info`: the group object plus `"my_role"` (an answer without a
/// group gives an empty group object).
pub fn group_info_json(r: &v1::GetGroupResponse) -> String {
    let empty = v1::GroupInfo::default();
    to_line(&GroupWithRoleJson {
        group: GroupJson::new(r.group.as_ref().unwrap_or(&empty)),
        my_role: role_label(r.my_role),
    })
}

/// `group add`: the group object plus `"added":[member, ..]` (members as in [`member_json`]).
pub fn members_added_json(r: &v1::AddMembersResponse) -> String {
    let empty = v1::GroupInfo::default();
    to_line(&GroupWithMembersJson {
        group: GroupJson::new(r.group.as_ref().unwrap_or(&empty)),
        added: Some(r.added.iter().map(MemberJson::new).collect()),
        removed: None,
    })
}

/// `group remove`: the group object plus `"removed":[member, ..]`.
pub fn members_removed_json(r: &v1::RemoveMembersResponse) -> String {
    let empty = v1::GroupInfo::default();
    to_line(&GroupWithMembersJson {
        group: GroupJson::new(r.group.as_ref().unwrap_or(&empty)),
        added: None,
        removed: Some(r.removed.iter().map(MemberJson::new).collect()),
    })
}

/// `group members`: `{"user_id","username","role","joined_at_ms"}`.
pub fn member_json(m: &v1::Member) -> String {
    to_line(&MemberJson::new(m))
}

/// `group leave`: `{"conversation_id","left":true}`.
pub fn left_json(conversation_id: &str) -> String {
    to_line(&GroupEndJson {
        conversation_id,
        left: true,
        dissolved: false,
    })
}

/// `group dissolve`: `{"conversation_id","dissolved":true}`.
pub fn dissolved_json(conversation_id: &str) -> String {
    to_line(&GroupEndJson {
        conversation_id,
        left: false,
        dissolved: true,
    })
}

/// `read`: `{"read_up_to","unread_count"}`.
pub fn read_json(r: &v1::MarkReadResponse) -> String {
    to_line(&ReadJson {
        read_up_to: r.read_up_to,
        unread_count: r.unread_count,
    })
}

fn message_done(conversation_id: &str, conv_seq: u64) -> MessageDoneJson<'_> {
    MessageDoneJson {
        message: MessageRefJson {
            conversation_id,
            conv_seq,
        },
        recalled: false,
        deleted: false,
        edited_at_ms: None,
    }
}

/// `recall`: `{"conversation_id","conv_seq","recalled":true}`.
pub fn recalled_json(conversation_id: &str, conv_seq: u64) -> String {
    to_line(&MessageDoneJson {
        recalled: true,
        ..message_done(conversation_id, conv_seq)
    })
}

/// `edit`: `{"conversation_id","conv_seq","edited_at_ms"}`.
pub fn edited_json(conversation_id: &str, conv_seq: u64, edited_at_ms: i64) -> String {
    to_line(&MessageDoneJson {
        edited_at_ms: Some(edited_at_ms),
        ..message_done(conversation_id, conv_seq)
    })
}

/// `delete`: `{"conversation_id","conv_seq","deleted":true}`.
pub fn deleted_json(conversation_id: &str, conv_seq: u64) -> String {
    to_line(&MessageDoneJson {
        deleted: true,
        ..message_done(conversation_id, conv_seq)
    })
}

/// `receipts`: `{"conversation_id","conv_seq","delivered_count","read_count","member_count"}`.
pub fn receipt_summary_json(r: &v1::ReceiptSummary) -> String {
    to_line(&ReceiptSummaryJson::new(r))
}

/// `typing`: `{"conversation_id","typing"}`.
pub fn typing_json(conversation_id: &str, typing: bool) -> String {
    to_line(&TypingJson {
        conversation_id,
        user: None,
        user_id: None,
        typing,
    })
}

/// `presence`: `{"user","user_id","state","last_seen_ms"}` (the push line without `type`).
pub fn presence_json(p: &v1::Presence) -> String {
    to_line(&PresenceJson::new(p))
}

/// `privacy`: `{"hide_presence"}`.
pub fn privacy_json(hide_presence: bool) -> String {
    to_line(&PrivacyJson { hide_presence })
}

/// `block` and `unblock`: `{"user","blocked"}`.
pub fn block_json(user: &str, blocked: bool) -> String {
    to_line(&BlockJson {
        user,
        user_id: None,
        blocked,
    })
}

/// `blocked`: `{"user"}`, one line per blocked user.
pub fn blocked_user_json(user: &str) -> String {
    to_line(&UserJson { user })
}

/// A send acknowledgement: `{"conversation_id","conv_seq","sent_at_ms","duplicate"}`.
pub fn ack_json(ack: &v1::SendResponse) -> String {
    to_line(&AckJson {
        conversation_id: &ack.conversation_id,
        conv_seq: ack.conv_seq,
        sent_at_ms: ack.sent_at_ms,
        duplicate: ack.duplicate,
    })
}

/// A registration: `{"user_id","username"}`.
pub fn registered_json(r: &v1::RegisterResponse) -> String {
    to_line(&RegisteredJson {
        user_id: r.user_id,
        username: &r.username,
    })
}

/// A login: `{"user_id","device_id","expires_at_ms"}` (never the token).
pub fn logged_in_json(r: &v1::LoginResponse) -> String {
    to_line(&LoggedInJson {
        user_id: r.user_id,
        device_id: r.device_id,
        expires_at_ms: r.expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> v1::Message {
        v1::Message {
            conversation_id: "d:1:2".into(),
            conv_seq: 3,
            sender_id: 1,
            sender_username: "alice".into(),
            sender_device_id: 2,
            client_msg_id: "m-1".into(),
            sent_at_ms: 1700000000000,
            content: Some(v1::Content {
                text: "hi \"bob\"\n".into(),
                payload: payload.to_vec(),
                payload_type: if payload.is_empty() {
                    String::new()
                } else {
                    "application/json".into()
                },
            }),
            ..Default::default()
        }
    }

    fn event(kind: Option<v1::event::Kind>) -> v1::Event {
        v1::Event {
            seq: 9,
            created_at_ms: 5,
            kind,
            ..Default::default()
        }
    }

    /// Checks a message event's exact line: field order, escaping, no payload fields.
    #[test]
    fn message_event_line() {
        let line = event_json(&event(Some(v1::event::Kind::Message(message(b"")))));
        assert_eq!(
            line,
            r#"{"seq":9,"type":"message","conversation_id":"d:1:2","conv_seq":3,"from":"alice","from_id":1,"device_id":2,"client_msg_id":"m-1","sent_at_ms":1700000000000,"text":"hi \"bob\"\n"}"#
        );
        // Another user's copy: no device or client message id.
        let mut m = message(b"");
        m.sender_device_id = 0;
        m.client_msg_id.clear();
        let line = event_json(&event(Some(v1::event::Kind::Message(m))));
        assert_eq!(
            line,
            r#"{"seq":9,"type":"message","conversation_id":"d:1:2","conv_seq":3,"from":"alice","from_id":1,"sent_at_ms":1700000000000,"text":"hi \"bob\"\n"}"#
        );
    }

    /// Checks the payload fields appear, base64-encoded, only with a payload.
    #[test]
    fn message_event_line_with_payload() {
        let line = event_json(&event(Some(v1::event::Kind::Message(message(b"{}\xff")))));
        assert!(
            line.ends_with(
                r#","text":"hi \"bob\"\n","payload_b64":"e33/","payload_type":"application/json"}"#
            ),
            "{line}"
        );
    }

    /// Checks read markers, unknown kinds and content-less messages.
    #[test]
    fn other_event_lines() {
        let marker = v1::event::Kind::ReadMarker(v1::ReadMarker {
            conversation_id: "d:1:2".into(),
            read_up_to: 4,
        });
        assert_eq!(
            event_json(&event(Some(marker))),
            r#"{"seq":9,"type":"read_marker","conversation_id":"d:1:2","read_up_to":4}"#
        );
        assert_eq!(event_json(&event(None)), r#"{"seq":9,"type":"unknown"}"#);
        let mut bare = message(b"");
        bare.content = None;
        assert!(message_json(&bare).ends_with(r#""text":""}"#));
    }

    /// Checks history and conversation lines reuse the message object.
    #[test]
    fn history_and_conversation_lines() {
        assert_eq!(
            message_json(&message(b"")),
            r#"{"conversation_id":"d:1:2","conv_seq":3,"from":"alice","from_id":1,"device_id":2,"client_msg_id":"m-1","sent_at_ms":1700000000000,"text":"hi \"bob\"\n"}"#
        );
        let mut summary = v1::ConversationSummary {
            conversation_id: "d:1:2".into(),
            peer_user_id: 2,
            peer_username: "bob".into(),
            last_message: Some(message(b"")),
            unread_count: 1,
            read_up_to: 2,
            ..Default::default()
        };
        let line = conversation_json(&summary);
        assert!(
            line.starts_with(
                r#"{"conversation_id":"d:1:2","peer_user_id":2,"peer_username":"bob","unread_count":1,"read_up_to":2,"last_message":{"conversation_id":"d:1:2","conv_seq":3,"#
            ),
            "{line}"
        );
        summary.last_message = None;
        assert!(conversation_json(&summary).ends_with(r#""last_message":null}"#));
    }

    /// Checks the command result lines.
    #[test]
    fn result_lines() {
        let ack = v1::SendResponse {
            conversation_id: "d:1:2".into(),
            conv_seq: 3,
            sent_at_ms: 4,
            duplicate: true,
        };
        assert_eq!(
            ack_json(&ack),
            r#"{"conversation_id":"d:1:2","conv_seq":3,"sent_at_ms":4,"duplicate":true}"#
        );
        let reg = v1::RegisterResponse {
            user_id: 1,
            username: "alice".into(),
        };
        assert_eq!(registered_json(&reg), r#"{"user_id":1,"username":"alice"}"#);
        let login = v1::LoginResponse {
            token: "secret".into(),
            user_id: 1,
            username: "alice".into(),
            device_id: 2,
            expires_at_ms: 3,
            flags: Vec::new(),
        };
        assert_eq!(
            logged_in_json(&login),
            r#"{"user_id":1,"device_id":2,"expires_at_ms":3}"#
        );
    }

    fn group_info() -> v1::GroupInfo {
        v1::GroupInfo {
            conversation_id: "g:5".into(),
            name: "crew".into(),
            description: "the \"crew\"".into(),
            settings: Some(v1::GroupSettings {
                post_policy: v1::PostPolicy::Admins as i32,
                add_policy: v1::AddPolicy::Everyone as i32,
                max_members: 50,
            }),
            owner_id: 1,
            owner_username: "alice".into(),
            member_count: 3,
            large: false,
            created_at_ms: 7,
            dissolved: false,
        }
    }

    const GROUP: &str = r#"{"conversation_id":"g:5","name":"crew","description":"the \"crew\"","owner":"alice","owner_id":1,"member_count":3,"large":false,"post_policy":"admins","add_policy":"everyone","max_members":50,"created_at_ms":7,"dissolved":false}"#;

    fn member(user_id: u64, username: &str, role: v1::GroupRole) -> v1::Member {
        v1::Member {
            user_id,
            username: username.into(),
            role: role as i32,
            joined_at_ms: 8,
        }
    }

    /// Checks group change lines: every kind's label, the members with their
    /// roles, the group object, and a missing group as null.
    #[test]
    fn group_change_lines() {
        use v1::GroupChangeKind as K;
        let change = |kind: K, group: Option<v1::GroupInfo>| {
            event(Some(v1::event::Kind::GroupChange(v1::GroupChange {
                conversation_id: "g:5".into(),
                actor_id: 1,
                actor_username: "alice".into(),
                kind: kind as i32,
                members: vec![
                    member(2, "bob", v1::GroupRole::Admin),
                    member(3, "carol", v1::GroupRole::Member),
                ],
                group,
            })))
        };
        assert_eq!(
            event_json(&change(K::MembersAdded, Some(group_info()))),
            format!(
                r#"{{"seq":9,"type":"group_change","conversation_id":"g:5","kind":"members_added","actor":"alice","actor_id":1,"members":[{{"user_id":2,"username":"bob","role":"admin"}},{{"user_id":3,"username":"carol","role":"member"}}],"group":{GROUP}}}"#
            )
        );
        let labels = [
            (K::Created, "created"),
            (K::MembersAdded, "members_added"),
            (K::MembersRemoved, "members_removed"),
            (K::MemberLeft, "member_left"),
            (K::Updated, "updated"),
            (K::RoleChanged, "role_changed"),
            (K::OwnershipTransferred, "ownership_transferred"),
            (K::Dissolved, "dissolved"),
            (K::Unspecified, "unknown"),
        ];
        for (kind, label) in labels {
            let line = event_json(&change(kind, None));
            assert!(line.contains(&format!(r#""kind":"{label}","#)), "{line}");
            assert!(line.ends_with(r#""group":null}"#), "{line}");
        }
        let mut large = change(K::Updated, None);
        large.seq = 0;
        large.group_seq = 77;
        assert!(
            event_json(&large)
                .starts_with(r#"{"seq":0,"group_seq":77,"type":"group_change","conversation_id":"g:5","kind":"updated","#),
            "{}",
            event_json(&large)
        );
        let mut unknown = change(K::Created, None);
        if let Some(v1::event::Kind::GroupChange(c)) = &mut unknown.kind {
            c.kind = 99;
            c.members[0].role = 99;
        }
        let line = event_json(&unknown);
        assert!(line.contains(r#""kind":"unknown""#), "{line}");
        assert!(line.contains(r#""role":"unknown""#), "{line}");
        assert_eq!(role_label(v1::GroupRole::Owner as i32), "owner");
        assert_eq!(role_label(v1::GroupRole::None as i32), "none");
    }

    /// Checks receipt, receipt summary, recall, edit, delete and block lines.
    #[test]
    fn receipt_and_message_change_lines() {
        let receipt = |kind: v1::ReceiptKind| {
            event(Some(v1::event::Kind::Receipt(v1::Receipt {
                conversation_id: "d:1:2".into(),
                user_id: 2,
                username: "bob".into(),
                kind: kind as i32,
                up_to: 4,
            })))
        };
        assert_eq!(
            event_json(&receipt(v1::ReceiptKind::Read)),
            r#"{"seq":9,"type":"receipt","conversation_id":"d:1:2","user":"bob","user_id":2,"kind":"read","up_to":4}"#
        );
        assert!(event_json(&receipt(v1::ReceiptKind::Delivered)).contains(r#""kind":"delivered""#));
        let summary = v1::ReceiptSummary {
            conversation_id: "g:5".into(),
            conv_seq: 3,
            delivered_count: 10,
            read_count: 4,
            member_count: 12,
        };
        assert_eq!(
            event_json(&event(Some(v1::event::Kind::ReceiptSummary(
                summary.clone()
            )))),
            r#"{"seq":9,"type":"receipt_summary","conversation_id":"g:5","conv_seq":3,"delivered_count":10,"read_count":4,"member_count":12}"#
        );
        assert_eq!(
            receipt_summary_json(&summary),
            r#"{"conversation_id":"g:5","conv_seq":3,"delivered_count":10,"read_count":4,"member_count":12}"#
        );
        let recalled = v1::event::Kind::MessageRecalled(v1::MessageRecalled {
            conversation_id: "g:5".into(),
            conv_seq: 3,
            actor_id: 1,
            recalled_at_ms: 11,
        });
        assert_eq!(
            event_json(&event(Some(recalled))),
            r#"{"seq":9,"type":"message_recalled","conversation_id":"g:5","conv_seq":3}"#
        );
        let mut edited = v1::MessageEdited {
            conversation_id: "d:1:2".into(),
            conv_seq: 3,
            content: Some(pigeon_client::text("fixed")),
            edited_at_ms: 12,
        };
        assert_eq!(
            event_json(&event(Some(v1::event::Kind::MessageEdited(edited.clone())))),
            r#"{"seq":9,"type":"message_edited","conversation_id":"d:1:2","conv_seq":3,"text":"fixed","edited_at_ms":12}"#
        );
        edited.content = Some(v1::Content {
            text: String::new(),
            payload: b"{}".to_vec(),
            payload_type: "application/json".into(),
        });
        assert_eq!(
            event_json(&event(Some(v1::event::Kind::MessageEdited(edited)))),
            r#"{"seq":9,"type":"message_edited","conversation_id":"d:1:2","conv_seq":3,"text":"","payload_b64":"e30=","payload_type":"application/json","edited_at_ms":12}"#
        );
        let deleted = v1::event::Kind::MessageDeleted(v1::MessageDeleted {
            conversation_id: "d:1:2".into(),
            conv_seq: 2,
        });
        assert_eq!(
            event_json(&event(Some(deleted))),
            r#"{"seq":9,"type":"message_deleted","conversation_id":"d:1:2","conv_seq":2}"#
        );
        let block = v1::event::Kind::BlockChanged(v1::BlockChanged {
            user_id: 4,
            username: "mallory".into(),
            blocked: true,
        });
        assert_eq!(
            event_json(&event(Some(block))),
            r#"{"seq":9,"type":"block_changed","user":"mallory","user_id":4,"blocked":true}"#
        );
    }

    /// Checks recalled messages lose their text and payload and say so, and
    /// edited ones carry edited_at_ms, in events and history alike; group
    /// messages are the same object.
    #[test]
    fn recalled_and_edited_messages() {
        let mut m = message(b"{}");
        m.recalled = true;
        m.content = None;
        let line = message_json(&m);
        assert_eq!(
            line,
            r#"{"conversation_id":"d:1:2","conv_seq":3,"from":"alice","from_id":1,"device_id":2,"client_msg_id":"m-1","sent_at_ms":1700000000000,"recalled":true}"#
        );
        // Content a server left in place is not shown either.
        m.content = message(b"{}").content;
        assert_eq!(message_json(&m), line);
        let mut m = message(b"");
        m.conversation_id = "g:5".into();
        m.edited_at_ms = 1700000000500;
        assert_eq!(
            event_json(&event(Some(v1::event::Kind::Message(m)))),
            r#"{"seq":9,"type":"message","conversation_id":"g:5","conv_seq":3,"from":"alice","from_id":1,"device_id":2,"client_msg_id":"m-1","sent_at_ms":1700000000000,"text":"hi \"bob\"\n","edited_at_ms":1700000000500}"#
        );
    }

    /// Checks the presence and typing lines of `listen` and of the commands.
    #[test]
    fn presence_and_typing_lines() {
        let mut p = v1::Presence {
            user_id: 2,
            username: "bob".into(),
            state: v1::PresenceState::Offline as i32,
            last_seen_ms: 1700000000000,
        };
        assert_eq!(
            presence_push_json(&p),
            r#"{"type":"presence","user":"bob","user_id":2,"state":"offline","last_seen_ms":1700000000000}"#
        );
        assert_eq!(
            presence_json(&p),
            r#"{"user":"bob","user_id":2,"state":"offline","last_seen_ms":1700000000000}"#
        );
        p.state = v1::PresenceState::Online as i32;
        assert!(presence_json(&p).contains(r#""state":"online""#));
        p.state = v1::PresenceState::Unknown as i32;
        assert!(presence_json(&p).contains(r#""state":"unknown""#));
        p.state = 42;
        assert!(presence_json(&p).contains(r#""state":"unknown""#));
        let t = v1::TypingPush {
            conversation_id: "g:5".into(),
            user_id: 2,
            username: "bob".into(),
            typing: true,
        };
        assert_eq!(
            typing_push_json(&t),
            r#"{"type":"typing","conversation_id":"g:5","user":"bob","user_id":2,"typing":true}"#
        );
        assert_eq!(
            typing_json("d:1:2", false),
            r#"{"conversation_id":"d:1:2","typing":false}"#
        );
    }

    /// Checks the group command lines and the group fields of conversation lines.
    #[test]
    fn group_command_lines() {
        assert_eq!(group_json(&group_info()), GROUP);
        let mut bare = group_info();
        bare.settings = None;
        bare.large = true;
        bare.dissolved = true;
        let line = group_json(&bare);
        assert!(
            line.ends_with(r#""large":true,"post_policy":"everyone","add_policy":"admins","max_members":0,"created_at_ms":7,"dissolved":true}"#),
            "{line}"
        );
        let info = v1::GetGroupResponse {
            group: Some(group_info()),
            my_role: v1::GroupRole::Admin as i32,
        };
        assert_eq!(
            group_info_json(&info),
            format!(
                r#"{},"my_role":"admin"}}"#,
                GROUP.strip_suffix('}').unwrap()
            )
        );
        let added = v1::AddMembersResponse {
            group: Some(group_info()),
            added: vec![member(2, "bob", v1::GroupRole::Member)],
        };
        assert_eq!(
            members_added_json(&added),
            format!(
                r#"{},"added":[{{"user_id":2,"username":"bob","role":"member","joined_at_ms":8}}]}}"#,
                GROUP.strip_suffix('}').unwrap()
            )
        );
        let removed = v1::RemoveMembersResponse {
            group: Some(group_info()),
            removed: vec![],
        };
        assert!(members_removed_json(&removed).ends_with(r#""dissolved":false,"removed":[]}"#));
        assert_eq!(
            member_json(&member(3, "carol", v1::GroupRole::Owner)),
            r#"{"user_id":3,"username":"carol","role":"owner","joined_at_ms":8}"#
        );
        assert_eq!(left_json("g:5"), r#"{"conversation_id":"g:5","left":true}"#);
        assert_eq!(
            dissolved_json("g:5"),
            r#"{"conversation_id":"g:5","dissolved":true}"#
        );

        let summary = v1::ConversationSummary {
            conversation_id: "g:5".into(),
            unread_count: 2,
            read_up_to: 1,
            group: Some(group_info()),
            my_role: v1::GroupRole::Member as i32,
            ..Default::default()
        };
        assert_eq!(
            conversation_json(&summary),
            format!(
                r#"{{"conversation_id":"g:5","peer_user_id":0,"peer_username":"","unread_count":2,"read_up_to":1,"group":{GROUP},"my_role":"member","last_message":null}}"#
            )
        );
    }

    /// Checks the results of read, recall, edit, delete, privacy and block commands.
    #[test]
    fn message_and_setting_result_lines() {
        let read = v1::MarkReadResponse {
            read_up_to: 5,
            unread_count: 0,
        };
        assert_eq!(read_json(&read), r#"{"read_up_to":5,"unread_count":0}"#);
        assert_eq!(
            recalled_json("g:5", 3),
            r#"{"conversation_id":"g:5","conv_seq":3,"recalled":true}"#
        );
        assert_eq!(
            edited_json("g:5", 3, 12),
            r#"{"conversation_id":"g:5","conv_seq":3,"edited_at_ms":12}"#
        );
        assert_eq!(
            deleted_json("d:1:2", 4),
            r#"{"conversation_id":"d:1:2","conv_seq":4,"deleted":true}"#
        );
        assert_eq!(privacy_json(true), r#"{"hide_presence":true}"#);
        assert_eq!(
            block_json("bob", false),
            r#"{"user":"bob","blocked":false}"#
        );
        assert_eq!(blocked_user_json("bob"), r#"{"user":"bob"}"#);
    }
}
