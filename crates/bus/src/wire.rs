//! What nodes say to each other on the bus: one protobuf message per NATS
//! message. Internal to a cluster (all nodes run compatible versions during
//! a rolling upgrade: fields are only ever added).

use pigeon_proto::v1::{Event, Frame};

/// One message on the bus, from `node`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct BusMessage {
    /// The sending node's id.
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(oneof = "Kind", tags = "2, 3, 4, 5, 6, 7, 8, 9")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Kind {
    /// Events newly committed to one user's log.
    #[prost(message, tag = "2")]
    Events(EventsMsg),
    /// Something to sync for these users (or everyone).
    #[prost(message, tag = "3")]
    Notice(NoticeMsg),
    /// An ephemeral push (presence, typing) for these users.
    #[prost(message, tag = "4")]
    Ephemeral(EphemeralMsg),
    /// Close a user's connections (all, or one session's).
    #[prost(message, tag = "5")]
    Close(CloseMsg),
    /// A user's first connection on the sender opened, or the last closed.
    #[prost(message, tag = "6")]
    Presence(PresenceMsg),
    /// The sender is alive: its endpoints and load.
    #[prost(message, tag = "7")]
    Beat(BeatMsg),
    /// Part of the list of users connected to the sender.
    #[prost(message, tag = "8")]
    Snapshot(SnapshotMsg),
    /// The sender is leaving (draining or stopping).
    #[prost(message, tag = "9")]
    Leaving(LeavingMsg),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EventsMsg {
    #[prost(uint64, tag = "1")]
    pub user_id: u64,
    #[prost(uint64, tag = "2")]
    pub prev_seq: u64,
    #[prost(uint64, tag = "3")]
    pub last_seq: u64,
    #[prost(message, repeated, tag = "4")]
    pub events: Vec<Event>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NoticeMsg {
    #[prost(uint64, repeated, tag = "1")]
    pub users: Vec<u64>,
    #[prost(bool, tag = "2")]
    pub everyone: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EphemeralMsg {
    #[prost(uint64, repeated, tag = "1")]
    pub users: Vec<u64>,
    /// A frame whose body is the push.
    #[prost(message, optional, tag = "2")]
    pub frame: Option<Frame>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CloseMsg {
    #[prost(uint64, tag = "1")]
    pub user_id: u64,
    /// The `ErrorCode` of the Goodbye (when closing all connections).
    #[prost(int32, tag = "2")]
    pub code: i32,
    /// Only the connections of this session (logout), if set.
    #[prost(string, tag = "3")]
    pub token_hash: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PresenceMsg {
    #[prost(uint64, tag = "1")]
    pub user_id: u64,
    #[prost(bool, tag = "2")]
    pub here: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct BeatMsg {
    /// Client-facing URLs of the sender.
    #[prost(string, repeated, tag = "1")]
    pub endpoints: Vec<String>,
    /// Open connections on the sender.
    #[prost(uint64, tag = "2")]
    pub load: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SnapshotMsg {
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    #[prost(uint64, repeated, tag = "2")]
    pub users: Vec<u64>,
    /// The last part of this epoch's snapshot.
    #[prost(bool, tag = "3")]
    pub last: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeavingMsg {}
