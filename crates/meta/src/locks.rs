//! POSIX record locks and BSD flock, held per (session, owner) in the store.
//!
//! Rules (fcntl(2)):
//! 1. Two locks conflict when they belong to different (session, owner) pairs, overlap, and at
//!    least one is a write lock.
//! 2. Setting a lock or unlock over a range first cuts that range out of the owner's own locks
//!    (splitting a lock that sticks out on both sides), then, unless unlocking, adds the new
//!    lock. So an owner can upgrade, downgrade and partially unlock.
//! 3. flock locks arrive as whole-file locks owned by the open file description, so they follow
//!    the same rules; they share one space with fcntl locks (as on NFS).
//!
//! Locks are stored, so they survive a metadata server restart; they are released when their
//! session ends or expires (see `server`). A waiting lock (F_SETLKW) is the client polling; the
//! server remembers, in memory, whom each polling owner waits for, and refuses with EDEADLK a wait
//! that would close a cycle (as the kernel does for local POSIX locks).

use crate::fs::{Fs, FsResult};
use crate::keys::*;
use crate::store::{MetaStore, ReadTxn, StoreError, Table, WriteTxn};
use cairn_proto::*;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Held {
    key: Vec<u8>,
    session: u64,
    owner: u64,
    start: u64,
    rec: LockRecord,
}

fn locks_of(t: &dyn ReadTxn, ino: Ino) -> FsResult<Vec<Held>> {
    let rows = t.range(
        Table::Locks,
        &ino.to_be_bytes(),
        &(ino + 1).to_be_bytes(),
        usize::MAX,
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for (key, v) in rows {
        let field = |at| u64_at(&key, at).ok_or_else(|| StoreError("short lock key".into()));
        out.push(Held {
            session: field(8)?,
            owner: field(16)?,
            start: field(24)?,
            rec: dec(&v)?,
            key,
        });
    }
    Ok(out)
}

fn lock_key(ino: Ino, session: u64, owner: u64, start: u64) -> Vec<u8> {
    let mut k = kk(ino, session);
    k.extend_from_slice(&owner.to_be_bytes());
    k.extend_from_slice(&start.to_be_bytes());
    k
}

fn overlaps(a_start: u64, a_end: u64, b_start: u64, b_end: u64) -> bool {
    a_start <= b_end && b_start <= a_end
}

fn conflict(held: &[Held], session: u64, lock: &LockSpec) -> Option<LockSpec> {
    blocker(held, session, lock).map(|h| LockSpec {
        owner: h.owner,
        start: h.start,
        end: h.rec.end,
        typ: if h.rec.write {
            LockType::Write
        } else {
            LockType::Read
        },
        pid: h.rec.pid,
    })
}

/// The held lock that blocks `lock`, if any.
fn blocker<'a>(held: &'a [Held], session: u64, lock: &LockSpec) -> Option<&'a Held> {
    if lock.typ == LockType::Unlock {
        return None;
    }
    held.iter().find(|h| {
        (h.session, h.owner) != (session, lock.owner)
            && overlaps(h.start, h.rec.end, lock.start, lock.end)
            && (h.rec.write || lock.typ == LockType::Write)
    })
}

/// A lock owner: (session, owner id).
type Owner = (u64, u64);

/// Whom each waiting owner waits for, as of its last poll. An entry not renewed for this long
/// is forgotten (its owner stopped waiting); clients poll at least every 100 ms.
const WAIT_FORGOTTEN: Duration = Duration::from_secs(1);

/// Lock waits, in memory: lost with a restart, rebuilt by the next polls.
#[derive(Default)]
pub struct LockWaits(Mutex<HashMap<Owner, (Owner, Instant)>>);

impl LockWaits {
    /// Record that `me` waits for `holder`, unless `holder` waits (through others) for `me`.
    fn wait_for(&self, me: Owner, holder: Owner) -> Result<(), ErrorCode> {
        let mut w = self.0.lock().expect("lock waits");
        let now = Instant::now();
        w.retain(|_, (_, at)| now.duration_since(*at) < WAIT_FORGOTTEN);
        let mut cur = holder;
        for _ in 0..=w.len() {
            if cur == me {
                return Err(ErrorCode::Deadlock);
            }
            match w.get(&cur) {
                Some((next, _)) => cur = *next,
                None => break,
            }
        }
        w.insert(me, (holder, now));
        Ok(())
    }

    fn done(&self, me: Owner) {
        self.0.lock().expect("lock waits").remove(&me);
    }
}

impl<S: MetaStore> Fs<S> {
    /// Set or release a lock for (session, `lock.owner`) without waiting. With `wait`, the caller
    /// polls again if the lock is taken: a wait that would deadlock fails with `Deadlock`.
    pub fn set_lock_in(
        &self,
        t: &mut dyn WriteTxn,
        ino: Ino,
        session: u64,
        lock: &LockSpec,
        wait: bool,
    ) -> FsResult<()> {
        if lock.start > lock.end {
            return Err(ErrorCode::Invalid.into());
        }
        self.getattr_in(t, ino)?;
        let held = locks_of(t, ino)?;
        let me = (session, lock.owner);
        if let Some(h) = blocker(&held, session, lock) {
            if wait {
                self.lock_waits().wait_for(me, (h.session, h.owner))?;
            }
            return Err(ErrorCode::WouldBlock.into());
        }
        // Granted: whatever this owner waited for before (a wait it gave up, or one of a process
        // that ended and whose owner id is reused) is over.
        self.lock_waits().done(me);
        for h in held
            .iter()
            .filter(|h| (h.session, h.owner) == (session, lock.owner))
        {
            if !overlaps(h.start, h.rec.end, lock.start, lock.end) {
                continue;
            }
            t.delete(Table::Locks, &h.key)?;
            if h.start < lock.start {
                let left = LockRecord {
                    end: lock.start - 1,
                    ..h.rec
                };
                t.put(
                    Table::Locks,
                    &lock_key(ino, session, h.owner, h.start),
                    &enc(&left),
                )?;
            }
            if h.rec.end > lock.end {
                t.put(
                    Table::Locks,
                    &lock_key(ino, session, h.owner, lock.end + 1),
                    &enc(&h.rec),
                )?;
            }
        }
        if lock.typ != LockType::Unlock {
            let rec = LockRecord {
                end: lock.end,
                write: lock.typ == LockType::Write,
                pid: lock.pid,
            };
            t.put(
                Table::Locks,
                &lock_key(ino, session, lock.owner, lock.start),
                &enc(&rec),
            )?;
        }
        let still_held = !t
            .range(Table::Locks, &kk(ino, session), &kk(ino, session + 1), 1)?
            .is_empty();
        if still_held {
            t.put(Table::SessionLocks, &kk(session, ino), &[])?;
        } else {
            t.delete(Table::SessionLocks, &kk(session, ino))?;
        }
        Ok(())
    }

    /// The lock of another owner that would block `lock`, if any (F_GETLK).
    pub fn get_lock(&self, ino: Ino, session: u64, lock: &LockSpec) -> FsResult<Option<LockSpec>> {
        self.store()
            .read(|t| Ok(conflict(&locks_of(t, ino)?, session, lock)))
    }

    /// Drop every lock `session` holds (its end or expiry).
    pub fn release_session_locks_in(&self, t: &mut dyn WriteTxn, session: u64) -> FsResult<()> {
        for (k, _) in t.range(
            Table::SessionLocks,
            &kk(session, 0),
            &kk(session + 1, 0),
            usize::MAX,
        )? {
            let ino = u64_at(&k, 8).ok_or_else(|| StoreError("short session-lock key".into()))?;
            for (lk, _) in t.range(
                Table::Locks,
                &kk(ino, session),
                &kk(ino, session + 1),
                usize::MAX,
            )? {
                t.delete(Table::Locks, &lk)?;
            }
            t.delete(Table::SessionLocks, &k)?;
        }
        Ok(())
    }
}
