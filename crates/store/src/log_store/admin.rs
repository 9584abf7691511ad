//! Administration: account changes (disable, enable, password), revoking
//! all of a user's sessions through the per-user session index, the
//! account list and totals; and the one-time indexing of sessions written
//! before the index existed.
//!
//! The index is a Meta key per live session (`keys::user_session`), written
//! with the session. Revoking all of a user's sessions revokes the indexed
//! ones and removes their keys, a bounded number per job.

use pigeon_core::store::{SessionRecord, Totals, UserChange, UserRecord};
use pigeon_core::{CoreError, StoreError, UserId};

use super::{Batch, Committer, Shared, Tx, corrupt, encode_json, refused};
use crate::engine::{Engine, Op, Table};
use crate::keys;

/// Sessions read per step when indexing pre-existing sessions at start-up.
const SESSIONS_INDEX_STEP_MAX: usize = 4096;

impl Committer {
    /// Applies an administrator's change to an account.
    pub(super) fn update_user(
        &mut self,
        tx: &mut Tx<'_>,
        user: UserId,
        change: UserChange,
    ) -> Result<UserRecord, StoreError> {
        let mut record = user_record(&tx.b, user)?
            .ok_or_else(|| refused(CoreError::UserNotFound(format!("user id {user}"))))?;
        match change {
            UserChange::Disable => record.disabled = true,
            UserChange::Enable => record.disabled = false,
            UserChange::PasswordHash(h) => record.password_hash = h,
        }
        tx.b.put(
            Table::Users,
            record.username.as_bytes().to_vec(),
            encode_json(&record),
        );
        Ok(record)
    }

    /// Revokes up to `limit` indexed sessions of `user` and drops them from
    /// the index; says how many were live and whether more are indexed.
    pub(super) fn revoke_user_sessions(
        &mut self,
        tx: &mut Tx<'_>,
        user: UserId,
        limit: usize,
    ) -> Result<(usize, bool), StoreError> {
        let (index, more) = indexed_sessions(&tx.b, user, limit.max(1))?;
        let mut revoked = 0;
        for key in index {
            let token = keys::user_session_token(&key).to_vec();
            let session: Option<SessionRecord> =
                tx.b.get_json("session", Table::Sessions, &token)?;
            if let Some(mut s) = session.filter(|s| !s.revoked) {
                s.revoked = true;
                tx.b.put(Table::Sessions, token, encode_json(&s));
                revoked += 1;
            }
            tx.b.delete(Table::Meta, key);
        }
        Ok((revoked, more))
    }
}

/// Refuses a new session for a disabled account, inside the job that
/// writes it, so a login racing a disable cannot slip through.
pub(super) fn check_enabled(b: &Batch<'_>, user: UserId) -> Result<(), StoreError> {
    match user_record(b, user)? {
        Some(u) if u.disabled => Err(refused(CoreError::AccountDisabled)),
        _ => Ok(()),
    }
}

/// Adds a new session to its user's index.
pub(super) fn index_session(b: &mut Batch<'_>, s: &SessionRecord) {
    b.put(
        Table::Meta,
        keys::user_session(s.user_id, &s.token_hash),
        Vec::new(),
    );
}

fn user_record(b: &Batch<'_>, user: UserId) -> Result<Option<UserRecord>, StoreError> {
    let Some(name) = b.get(Table::UserIds, &keys::user_id(user))? else {
        return Ok(None);
    };
    b.get_json("user", Table::Users, &name)
}

/// Up to `limit` index keys of `user`, the batch's own writes included;
/// and whether more may follow.
fn indexed_sessions(
    b: &Batch<'_>,
    user: UserId,
    limit: usize,
) -> Result<(Vec<Vec<u8>>, bool), StoreError> {
    let start = keys::user_sessions(user);
    let end = keys::prefix_end(&start);
    let committed = b.engine.scan(Table::Meta, &start, &end, false, limit)?;
    let more = committed.len() == limit;
    let mut keys: std::collections::BTreeSet<Vec<u8>> = committed
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !matches!(b.written(Table::Meta, k), Some(None)))
        .collect();
    // Sessions created earlier in this batch.
    for (k, v) in b.written_in(Table::Meta) {
        if v.is_some() && k >= &start[..] && k < &end[..] {
            keys.insert(k.to_vec());
        }
    }
    Ok((keys.into_iter().collect(), more))
}

impl Shared {
    /// Accounts with id > `after`, in id order, at most `limit`.
    pub(super) fn list_users(
        &self,
        after: UserId,
        limit: usize,
    ) -> Result<(Vec<UserRecord>, bool), StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok((Vec::new(), false));
        };
        let limit = limit.max(1);
        let mut rows = self.engine.scan(
            Table::UserIds,
            &keys::user_id(first),
            &keys::prefix_end(&keys::user_id(u64::MAX)),
            false,
            limit + 1,
        )?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let mut users = Vec::with_capacity(rows.len());
        for (_, name) in rows {
            let user = self
                .get_json("user", Table::Users, &name)?
                .ok_or_else(|| corrupt("user id", "names no user record"))?;
            users.push(user);
        }
        Ok((users, more))
    }

    /// Accounts and groups ever created.
    pub(super) fn totals(&self) -> Result<Totals, StoreError> {
        let next = |key: &[u8]| -> Result<u64, StoreError> {
            Ok(self
                .engine
                .get(Table::Meta, key)?
                .and_then(|v| keys::read_u64(&v))
                .unwrap_or(1))
        };
        Ok(Totals {
            users: next(keys::NEXT_USER_ID)?.saturating_sub(1),
            groups: next(keys::NEXT_GROUP_ID)?.saturating_sub(1),
        })
    }
}

/// Indexes the live sessions of a store written before the per-user
/// session index existed; once done, marks the store so it never runs
/// again. Runs at start-up, before the committer.
pub(super) fn index_existing_sessions(engine: &dyn Engine) -> Result<(), StoreError> {
    if engine.get(Table::Meta, keys::SESSIONS_INDEXED)?.is_some() {
        return Ok(());
    }
    let mut start = Vec::new();
    let end = vec![u8::MAX; 65];
    loop {
        let rows = engine.scan(
            Table::Sessions,
            &start,
            &end,
            false,
            SESSIONS_INDEX_STEP_MAX,
        )?;
        let Some((last, _)) = rows.last() else {
            break;
        };
        start = last.clone();
        start.push(0);
        let mut ops = Vec::with_capacity(rows.len());
        for (_, v) in &rows {
            let s: SessionRecord = super::decode_json("session", v)?;
            if !s.revoked {
                ops.push(Op::Put(
                    Table::Meta,
                    keys::user_session(s.user_id, &s.token_hash),
                    Vec::new(),
                ));
            }
        }
        engine.apply(&mut ops)?;
        if rows.len() < SESSIONS_INDEX_STEP_MAX {
            break;
        }
    }
    engine.apply(&mut vec![Op::Put(
        Table::Meta,
        keys::SESSIONS_INDEXED.to_vec(),
        Vec::new(),
    )])?;
    engine.sync()
}
