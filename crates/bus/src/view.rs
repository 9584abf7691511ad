//! One node's view of the others: who is alive, where, how loaded, and
//! which users are connected to each. Built only from what arrives on the
//! bus; a node that stops beating is forgotten after the timeout.
//!
//! Each node's messages arrive in the order it sent them (NATS keeps the
//! order of one publisher), so presence changes and snapshots of one node
//! apply in order: a snapshot of epoch `e` replaces what was known of that
//! node, and changes after it refine it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pigeon_core::UserId;

/// A live node as `GET /v1/endpoints` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    /// The node's id.
    pub id: String,
    /// Its client-facing URLs.
    pub endpoints: Vec<String>,
    /// Its open connections.
    pub load: u64,
}

#[derive(Debug)]
struct NodeState {
    endpoints: Vec<String>,
    load: u64,
    last_seen: Instant,
    /// Connected users, with the snapshot epoch that last confirmed each.
    users: HashMap<UserId, u64>,
    epoch: u64,
    leaving: bool,
}

impl NodeState {
    fn new(now: Instant) -> NodeState {
        NodeState {
            endpoints: Vec::new(),
            load: 0,
            last_seen: now,
            users: HashMap::new(),
            epoch: 0,
            leaving: false,
        }
    }
}

/// The other nodes, as seen from here.
#[derive(Debug, Default)]
pub(crate) struct View {
    nodes: HashMap<String, NodeState>,
}

impl View {
    fn node(&mut self, id: &str, now: Instant) -> (&mut NodeState, bool) {
        let new = !self.nodes.contains_key(id);
        let state = self
            .nodes
            .entry(id.to_string())
            .or_insert_with(|| NodeState::new(now));
        state.last_seen = now;
        (state, new)
    }

    /// A heartbeat; says whether the node was unknown until now.
    pub(crate) fn beat(
        &mut self,
        id: &str,
        endpoints: Vec<String>,
        load: u64,
        now: Instant,
    ) -> bool {
        let (state, new) = self.node(id, now);
        state.endpoints = endpoints;
        state.load = load;
        state.leaving = false;
        new
    }

    /// A user's first connection on `id` opened, or its last closed.
    pub(crate) fn presence(&mut self, id: &str, user: UserId, here: bool, now: Instant) {
        let (state, _) = self.node(id, now);
        if here {
            let epoch = state.epoch;
            state.users.insert(user, epoch);
        } else {
            state.users.remove(&user);
        }
    }

    /// Part of a full list of the users on `id`; the last part drops the
    /// users the list did not confirm.
    pub(crate) fn snapshot(
        &mut self,
        id: &str,
        epoch: u64,
        users: &[UserId],
        last: bool,
        now: Instant,
    ) {
        let (state, _) = self.node(id, now);
        if epoch < state.epoch {
            return; // an older snapshot overtaken by a newer one
        }
        state.epoch = epoch;
        for &u in users {
            state.users.insert(u, epoch);
        }
        if last {
            state.users.retain(|_, e| *e >= epoch);
        }
    }

    /// The node said it is leaving: no longer offered to clients, its users
    /// count as online until they go or it stops beating.
    pub(crate) fn leaving(&mut self, id: &str, now: Instant) {
        self.node(id, now).0.leaving = true;
    }

    /// Forgets the nodes silent for longer than `timeout`; returns them
    /// with the users that were connected to them.
    pub(crate) fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<(String, Vec<UserId>)> {
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last_seen) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        dead.into_iter()
            .filter_map(|id| {
                let state = self.nodes.remove(&id)?;
                Some((id, state.users.into_keys().collect()))
            })
            .collect()
    }

    /// Whether `user` is connected to another live node.
    pub(crate) fn is_online(&self, user: UserId) -> bool {
        self.nodes.values().any(|s| s.users.contains_key(&user))
    }

    /// Of `users`, those connected to another live node.
    pub(crate) fn online_of(&self, users: &[UserId]) -> Vec<UserId> {
        users
            .iter()
            .copied()
            .filter(|&u| self.is_online(u))
            .collect()
    }

    /// The live nodes that take clients (not leaving), least loaded first.
    pub(crate) fn live(&self) -> Vec<NodeSummary> {
        let mut out: Vec<NodeSummary> = self
            .nodes
            .iter()
            .filter(|(_, s)| !s.leaving && !s.endpoints.is_empty())
            .map(|(id, s)| NodeSummary {
                id: id.clone(),
                endpoints: s.endpoints.clone(),
                load: s.load,
            })
            .collect();
        out.sort_by(|a, b| a.load.cmp(&b.load).then_with(|| a.id.cmp(&b.id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_and_snapshots_apply_in_order() {
        let t = Instant::now();
        let mut v = View::default();
        assert!(v.beat("b", vec!["tcp://b:1".into()], 3, t));
        assert!(!v.beat("b", vec!["tcp://b:1".into()], 4, t));
        v.presence("b", 7, true, t);
        assert!(v.is_online(7));
        // A snapshot that no longer lists 7 drops it, on its last part.
        v.snapshot("b", 1, &[8], false, t);
        assert!(v.is_online(7) && v.is_online(8));
        v.snapshot("b", 1, &[9], true, t);
        assert!(!v.is_online(7) && v.is_online(8) && v.is_online(9));
        // A change after the snapshot refines it; an older snapshot is ignored.
        v.presence("b", 8, false, t);
        v.presence("b", 10, true, t);
        v.snapshot("b", 0, &[8], true, t);
        assert!(!v.is_online(8) && v.is_online(10) && v.is_online(9));
        assert_eq!(v.online_of(&[8, 9, 10, 11]), vec![9, 10]);
    }

    #[test]
    fn silent_and_leaving_nodes_are_not_offered() {
        let t = Instant::now();
        let mut v = View::default();
        v.beat("a", vec!["tcp://a:1".into()], 10, t);
        v.beat("b", vec!["tcp://b:1".into()], 2, t);
        v.beat("c", vec!["tcp://c:1".into()], 5, t + Duration::from_secs(4));
        v.presence("a", 1, true, t);
        let ids: Vec<_> = v.live().into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["b", "c", "a"], "least loaded first");
        v.leaving("b", t);
        let ids: Vec<_> = v.live().into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["c", "a"]);
        let mut dead = v.expire(t + Duration::from_secs(6), Duration::from_secs(5));
        dead.sort();
        assert_eq!(
            dead,
            [("a".to_string(), vec![1]), ("b".to_string(), vec![])]
        );
        assert!(!v.is_online(1), "a dead node's users are forgotten");
        assert_eq!(v.live().len(), 1);
    }
}
