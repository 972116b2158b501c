//! The lock server: a pure state machine over lock requests, invalidation
//! replies, recoveries and releases. It knows clients by id and nothing of
//! connections or sessions; [`super::ServerCore`] turns its actions into frames.
//!
//! Per lock: holders (client, mode), waiters in arrival order, and the
//! invalidations sent and not yet answered (at most one per holder). The front
//! waiter is granted once no other holder's mode conflicts with it; until then
//! every conflicting holder is sent an invalidation, and later waiters wait too.

use std::collections::{BTreeMap, VecDeque};

use smallvec::SmallVec;

use crate::wire::{Command, ErrorCode, LockMsg, LockRange, Mode};

pub type ClientId = u64;

/// Locks the server tracks at once (holders or waiters): bounds its memory.
pub const LOCKS_MAX: usize = 1 << 22;

/// What the server asks its owner to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockAction {
    /// Answer request `request_id` (a LOCK or RECOVER) with the mode granted.
    Grant {
        client: ClientId,
        request_id: u64,
        command: Command,
        msg: LockMsg,
        waited_us: u64,
    },
    /// Answer request `request_id` with an error.
    Refuse {
        client: ClientId,
        request_id: u64,
        command: Command,
        msg: LockMsg,
        error: ErrorCode,
    },
    /// Ask `client` to drop its mode on `msg.range` to `msg.mode` or lower.
    Invalidate { client: ClientId, msg: LockMsg },
}

#[derive(Debug)]
struct Waiter {
    client: ClientId,
    request_id: u64,
    mode: Mode,
    arrived_us: u64,
}

/// What only a contended lock has: requests waiting for it and holders asked
/// to give it up.
#[derive(Debug, Default)]
struct Queue {
    waiters: VecDeque<Waiter>,
    /// Holders sent an invalidation and not yet answered, with its target mode.
    invalidating: Vec<(ClientId, Mode)>,
}

/// One lock: 64 bytes. Tens of thousands live in the ordered map at once, so
/// the rare parts (more than one holder, a queue) live out of line: a lock's
/// uncontended life allocates nothing and a map node holds more of them.
#[derive(Debug)]
struct Lock {
    range: LockRange,
    holders: SmallVec<[(ClientId, Mode); 1]>,
    /// None while nobody waits and no invalidation is outstanding.
    queue: Option<Box<Queue>>,
}

impl Lock {
    fn new(range: LockRange) -> Lock {
        Lock {
            range,
            holders: SmallVec::new(),
            queue: None,
        }
    }

    fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.queue.is_none()
    }

    fn has_waiters(&self) -> bool {
        self.queue.as_ref().is_some_and(|q| !q.waiters.is_empty())
    }

    fn waits(&self, client: ClientId) -> bool {
        self.queue
            .as_ref()
            .is_some_and(|q| q.waiters.iter().any(|w| w.client == client))
    }

    fn queue_mut(&mut self) -> &mut Queue {
        self.queue.get_or_insert_with(Box::default)
    }

    /// Frees the queue once it is empty, so `is_idle` needs no look inside.
    fn tidy(&mut self) {
        if self
            .queue
            .as_ref()
            .is_some_and(|q| q.waiters.is_empty() && q.invalidating.is_empty())
        {
            self.queue = None;
        }
    }

    fn held_by(&self, client: ClientId) -> Mode {
        self.holders
            .iter()
            .find(|(c, _)| *c == client)
            .map_or(Mode::Null, |(_, m)| *m)
    }

    fn set_holder(&mut self, client: ClientId, mode: Mode) {
        let index = self.holders.iter().position(|(c, _)| *c == client);
        match (index, mode) {
            (Some(i), Mode::Null) => {
                self.holders.swap_remove(i);
            }
            (Some(i), mode) => self.holders[i].1 = mode,
            (None, Mode::Null) => {}
            (None, mode) => self.holders.push((client, mode)),
        }
    }

    fn invalidating(&self, client: ClientId) -> bool {
        self.queue
            .as_ref()
            .is_some_and(|q| q.invalidating.iter().any(|(c, _)| *c == client))
    }

    /// Whether another holder's mode conflicts with `mode`.
    fn conflicts(&self, client: ClientId, mode: Mode) -> bool {
        self.holders
            .iter()
            .any(|&(c, m)| c != client && !m.compatible(mode))
    }
}

/// Locks are keyed by (zone, end); ranges of distinct locks never overlap,
/// so this orders them as well as their starts would.
type LockKey = (u64, u64);

fn key(range: &LockRange) -> LockKey {
    (range.zone, range.end)
}

/// Idle locks kept for reuse: past this many, or a quarter of the live ones
/// if that is more, a sweep drops every one of them. A sweep walks at most
/// five times as many entries as it drops, so it costs O(1) per lock retired,
/// amortized; the memory kept is ~6 MB or a quarter more than the live locks.
const RETIRED_MAX: usize = 1 << 16;

/// The locks: an ordered index by (zone, end) for the overlap check and the
/// ordered walks, over a slab that holds the locks themselves. The index
/// entries are 24 bytes, so a descent reads small nodes and a node merge
/// moves little; a freed slab slot is the next one taken, so the locks being
/// created reuse memory that is still in cache.
///
/// A lock that falls idle (no holder, waiter or pending invalidation) is not
/// removed at once but *retired*: it stays in the index for the next request
/// on the same range, which then costs one descent instead of a descent and
/// an insertion, and its release no removal (the lock-shrink flood takes
/// and releases the same ranges over and over). Retired locks are not locks
/// in the protocol's sense: they are not counted, and one that partially
/// overlaps a new range is dropped rather than refusing it.
#[derive(Debug, Default)]
struct Locks {
    index: BTreeMap<LockKey, u32>,
    slab: Vec<Lock>,
    /// Per slab slot: the lock there is retired (and so idle).
    retired: Vec<bool>,
    retired_count: usize,
    free: Vec<u32>,
}

impl Locks {
    /// Locks held, waited for or owed an invalidation reply.
    fn live(&self) -> usize {
        self.index.len() - self.retired_count
    }

    fn slot(&self, key: &LockKey) -> Option<u32> {
        self.index.get(key).copied()
    }

    fn get_mut(&mut self, key: &LockKey) -> Option<&mut Lock> {
        self.index
            .get(key)
            .map(|&slot| &mut self.slab[slot as usize])
    }

    /// The lock named `range`, revived if it was retired; or else the first
    /// lock ending at or after its start (the only one that can overlap it,
    /// as locks are disjoint and keyed by their end), which if it overlaps is
    /// live: retired locks overlapping `range` are dropped on the way.
    /// Usually one descent.
    fn find(&mut self, range: LockRange) -> Option<(u32, &mut Lock)> {
        loop {
            let (&key, &slot) = self.index.range((range.zone, range.start)..).next()?;
            let lock = &self.slab[slot as usize];
            if lock.range == range {
                if self.retired[slot as usize] {
                    self.retired[slot as usize] = false;
                    self.retired_count -= 1;
                }
            } else if self.retired[slot as usize] && lock.range.overlaps(&range) {
                self.remove(&key);
                continue;
            }
            return Some((slot, &mut self.slab[slot as usize]));
        }
    }

    /// Adds a lock under a key not present.
    fn insert(&mut self, key: LockKey, lock: Lock) -> &mut Lock {
        if self.index.len() >= LOCKS_MAX {
            self.sweep();
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = lock;
                slot
            }
            None => {
                self.slab.push(lock);
                self.retired.push(false);
                u32::try_from(self.slab.len() - 1).expect("LOCKS_MAX fits in u32")
            }
        };
        let previous = self.index.insert(key, slot);
        debug_assert!(previous.is_none());
        &mut self.slab[slot as usize]
    }

    /// Retires the lock in `slot` if it is idle.
    fn retire_if_idle(&mut self, slot: u32) {
        let index = slot as usize;
        if self.retired[index] || !self.slab[index].is_idle() {
            return;
        }
        self.retired[index] = true;
        self.retired_count += 1;
        if self.retired_count > RETIRED_MAX.max(self.live() / 4) {
            self.sweep();
        }
    }

    fn remove(&mut self, key: &LockKey) {
        if let Some(slot) = self.index.remove(key) {
            let index = slot as usize;
            if std::mem::take(&mut self.retired[index]) {
                self.retired_count -= 1;
            }
            self.slab[index] = Lock::new(self.slab[index].range);
            self.free.push(slot);
        }
    }

    /// Drops every retired lock; then, if most of the slab is free (after a
    /// burst of locks was released), moves the locks left to a slab of their
    /// size, so a burst does not pin its peak memory for good.
    fn sweep(&mut self) {
        let keys: Vec<LockKey> = self
            .index
            .iter()
            .filter(|(_, &slot)| self.retired[slot as usize])
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            self.remove(&key);
        }
        if self.slab.len() > 2 * self.index.len() + RETIRED_MAX {
            let mut slab = Vec::with_capacity(self.index.len());
            for slot in self.index.values_mut() {
                let lock = std::mem::replace(
                    &mut self.slab[*slot as usize],
                    Lock::new(LockRange::new(0, 0, 0)),
                );
                *slot = u32::try_from(slab.len()).expect("LOCKS_MAX fits in u32");
                slab.push(lock);
            }
            self.retired = vec![false; slab.len()];
            self.slab = slab;
            self.free = Vec::new();
        }
    }

    /// The live locks in key order.
    fn iter(&self) -> impl Iterator<Item = (&LockKey, &Lock)> {
        self.index
            .iter()
            .filter(|(_, &slot)| !self.retired[slot as usize])
            .map(|(key, &slot)| (key, &self.slab[slot as usize]))
    }

    fn values(&self) -> impl Iterator<Item = &Lock> {
        self.iter().map(|(_, lock)| lock)
    }

    /// Retired locks are idle and counted right, and no two locks, live or
    /// retired, overlap.
    fn check(&self) -> Result<(), String> {
        let mut retired = 0;
        let mut previous: Option<&LockRange> = None;
        for (key, &slot) in &self.index {
            let lock = &self.slab[slot as usize];
            if previous.is_some_and(|p| p.overlaps(&lock.range)) {
                return Err(format!("locks {previous:?} and {:?} overlap", lock.range));
            }
            previous = Some(&lock.range);
            if key != &self::key(&lock.range) {
                return Err(format!("{:?} indexed under {key:?}", lock.range));
            }
            if self.retired[slot as usize] {
                retired += 1;
                if !lock.is_idle() {
                    return Err(format!("retired lock {:?} is in use", lock.range));
                }
            }
        }
        if retired != self.retired_count {
            return Err(format!(
                "{retired} retired locks, {} counted",
                self.retired_count
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct LockServer {
    locks: Locks,
    /// Until this time (µs) only RECOVER is granted: clients of the previous
    /// server re-assert what they held before anything new is handed out.
    recovering_until_us: u64,
    waiters: u64,
    grants_total: u64,
    invalidations_total: u64,
}

impl LockServer {
    /// A server that grants only re-asserted locks until `recovering_until_us`.
    pub fn new(recovering_until_us: u64) -> LockServer {
        LockServer {
            recovering_until_us,
            ..LockServer::default()
        }
    }

    pub fn locks(&self) -> usize {
        self.locks.live()
    }

    pub fn waiters(&self) -> u64 {
        self.waiters
    }

    pub fn grants_total(&self) -> u64 {
        self.grants_total
    }

    pub fn invalidations_total(&self) -> u64 {
        self.invalidations_total
    }

    pub fn recovering(&self, now_us: u64) -> bool {
        now_us < self.recovering_until_us
    }

    /// Every (range, client, mode) granted, for checkers.
    pub fn holders(&self) -> Vec<(LockRange, ClientId, Mode)> {
        let mut all = Vec::new();
        for lock in self.locks.values() {
            all.extend(
                lock.holders
                    .iter()
                    .map(|&(client, mode)| (lock.range, client, mode)),
            );
        }
        all
    }

    /// A LOCK request: a downgrade (including NULL, a release) is granted at
    /// once; anything else waits its turn behind earlier requests.
    pub fn request(
        &mut self,
        now_us: u64,
        client: ClientId,
        request_id: u64,
        msg: LockMsg,
        out: &mut Vec<LockAction>,
    ) {
        let lock_key = key(&msg.range);
        let recovering = self.recovering(now_us);
        let refuse = |error| LockAction::Refuse {
            client,
            request_id,
            command: Command::Lock,
            msg,
            error,
        };
        // Locks are disjoint and keyed by their end, so the first lock ending
        // at or after our start is ours, overlaps ours, or tells that the range
        // is free: one descent.
        let (slot, lock) = match self.locks.find(msg.range) {
            Some((slot, lock)) if lock.range == msg.range => (slot, lock),
            found => {
                let overlapped = found.is_some_and(|(_, l)| l.range.overlaps(&msg.range));
                if msg.mode == Mode::Null {
                    // Releasing what it does not hold: nothing to change.
                    grant(&mut self.grants_total, client, request_id, msg, out);
                } else if overlapped {
                    out.push(refuse(ErrorCode::RangeOverlap));
                } else if self.locks.live() >= LOCKS_MAX {
                    out.push(refuse(ErrorCode::InvalidRequest));
                } else if recovering {
                    let mut lock = Lock::new(msg.range);
                    lock.queue_mut().waiters.push_back(Waiter {
                        client,
                        request_id,
                        mode: msg.mode,
                        arrived_us: now_us,
                    });
                    self.locks.insert(lock_key, lock);
                    self.waiters += 1;
                } else {
                    // A free range: granted at once.
                    let mut lock = Lock::new(msg.range);
                    lock.set_holder(client, msg.mode);
                    self.locks.insert(lock_key, lock);
                    grant(&mut self.grants_total, client, request_id, msg, out);
                }
                return;
            }
        };
        if lock.held_by(client).covers(msg.mode) {
            // A downgrade never waits.
            lock.set_holder(client, msg.mode);
            let (waiting, idle) = (lock.has_waiters(), lock.is_idle());
            grant(&mut self.grants_total, client, request_id, msg, out);
            if waiting {
                self.process(now_us, lock_key, out);
            } else if idle {
                self.locks.retire_if_idle(slot);
            }
            return;
        }
        if !lock.has_waiters()
            && !recovering
            && !lock.conflicts(client, msg.mode)
            && !lock.invalidating(client)
        {
            // Nobody ahead and nothing in the way: what process() would do
            // after queueing, without the queue.
            lock.set_holder(client, msg.mode);
            grant(&mut self.grants_total, client, request_id, msg, out);
            return;
        }
        if lock.waits(client) {
            out.push(refuse(ErrorCode::InvalidRequest));
            return;
        }
        lock.queue_mut().waiters.push_back(Waiter {
            client,
            request_id,
            mode: msg.mode,
            arrived_us: now_us,
        });
        self.waiters += 1;
        self.process(now_us, lock_key, out);
    }

    /// A RECOVER request: a client of a previous server re-asserts a mode it
    /// held. Granted if no other holder conflicts and nobody waits for it.
    pub fn recover(
        &mut self,
        now_us: u64,
        client: ClientId,
        request_id: u64,
        msg: LockMsg,
        out: &mut Vec<LockAction>,
    ) {
        if msg.mode == Mode::Null {
            self.grant_action(client, request_id, Command::Recover, msg, 0, out);
            return;
        }
        let lock_key = key(&msg.range);
        let recovering = self.recovering(now_us);
        let lock = match Self::find_or_create(&mut self.locks, msg.range) {
            Ok(lock) => lock,
            Err(error) => {
                out.push(LockAction::Refuse {
                    client,
                    request_id,
                    command: Command::Recover,
                    msg,
                    error,
                });
                return;
            }
        };
        let conflict = lock.conflicts(client, msg.mode) || (lock.has_waiters() && !recovering);
        if conflict {
            out.push(LockAction::Refuse {
                client,
                request_id,
                command: Command::Recover,
                msg,
                error: ErrorCode::RecoverConflict,
            });
            self.retire_if_idle(lock_key);
            return;
        }
        let held = lock.held_by(client);
        if !held.covers(msg.mode) {
            lock.set_holder(client, msg.mode);
        }
        self.grant_action(client, request_id, Command::Recover, msg, 0, out);
    }

    /// A client's answer to an invalidation: the mode it holds now.
    pub fn invalidated(
        &mut self,
        now_us: u64,
        client: ClientId,
        msg: LockMsg,
        out: &mut Vec<LockAction>,
    ) {
        let lock_key = key(&msg.range);
        let Some(lock) = self
            .locks
            .get_mut(&lock_key)
            .filter(|l| l.range == msg.range)
        else {
            return;
        };
        let Some(queue) = lock.queue.as_mut() else {
            return;
        };
        let Some(index) = queue.invalidating.iter().position(|(c, _)| *c == client) else {
            return;
        };
        queue.invalidating.swap_remove(index);
        // The reply states what the client holds once it sent it; it can only
        // have gone down since we last knew.
        if lock.held_by(client).covers(msg.mode) {
            lock.set_holder(client, msg.mode);
        }
        self.process(now_us, lock_key, out);
    }

    /// Releases everything a client holds or waits for (farewell, or its
    /// grace period ran out). A scan of all locks: rare, and it keeps the hot
    /// path free of a per-client index.
    pub fn release_all(&mut self, now_us: u64, client: ClientId, out: &mut Vec<LockAction>) {
        let keys: Vec<LockKey> = self
            .locks
            .iter()
            .filter(|(_, l)| {
                l.held_by(client) != Mode::Null || l.invalidating(client) || l.waits(client)
            })
            .map(|(k, _)| *k)
            .collect();
        for lock_key in keys {
            let lock = self.locks.get_mut(&lock_key).expect("key collected above");
            lock.set_holder(client, Mode::Null);
            if let Some(queue) = lock.queue.as_mut() {
                queue.invalidating.retain(|(c, _)| *c != client);
                let before = queue.waiters.len();
                queue.waiters.retain(|w| w.client != client);
                self.waiters -= (before - queue.waiters.len()) as u64;
            }
            self.process(now_us, lock_key, out);
        }
    }

    /// Ends the recovery window when its time comes and grants what waited.
    pub fn tick(&mut self, now_us: u64, out: &mut Vec<LockAction>) {
        if self.recovering_until_us != 0 && now_us >= self.recovering_until_us {
            self.recovering_until_us = 0;
            let keys: Vec<LockKey> = self
                .locks
                .iter()
                .filter(|(_, l)| l.has_waiters())
                .map(|(k, _)| *k)
                .collect();
            for lock_key in keys {
                self.process(now_us, lock_key, out);
            }
        }
    }

    /// Checks the invariant: no two holders of overlapping ranges hold
    /// incompatible modes. Distinct locks never overlap (checked at creation),
    /// so holders of one lock are compared pairwise, and neighbours' ranges are
    /// checked for overlap.
    pub fn check_invariant(&self) -> Result<(), String> {
        self.locks.check()?;
        let mut previous: Option<&LockRange> = None;
        for lock in self.locks.values() {
            for (i, &(a, mode_a)) in lock.holders.iter().enumerate() {
                for &(b, mode_b) in &lock.holders[i + 1..] {
                    if a == b || !mode_a.compatible(mode_b) {
                        return Err(format!(
                            "{:?}: client {a} {mode_a:?} and client {b} {mode_b:?}",
                            lock.range
                        ));
                    }
                }
            }
            if let Some(prev) = previous {
                if prev.overlaps(&lock.range) {
                    return Err(format!("locks {prev:?} and {:?} overlap", lock.range));
                }
            }
            previous = Some(&lock.range);
        }
        Ok(())
    }

    fn grant_action(
        &mut self,
        client: ClientId,
        request_id: u64,
        command: Command,
        msg: LockMsg,
        waited_us: u64,
        out: &mut Vec<LockAction>,
    ) {
        self.grants_total += 1;
        out.push(LockAction::Grant {
            client,
            request_id,
            command,
            msg,
            waited_us,
        });
    }

    /// Finds the lock named `range`, creating it if no lock overlaps it.
    fn find_or_create(locks: &mut Locks, range: LockRange) -> Result<&mut Lock, ErrorCode> {
        let first = locks.find(range).map(|(slot, l)| (slot, l.range));
        match first {
            Some((slot, found)) if found == range => return Ok(&mut locks.slab[slot as usize]),
            Some((_, found)) if found.overlaps(&range) => return Err(ErrorCode::RangeOverlap),
            _ => {}
        }
        if locks.live() >= LOCKS_MAX {
            return Err(ErrorCode::InvalidRequest);
        }
        Ok(locks.insert(key(&range), Lock::new(range)))
    }

    fn retire_if_idle(&mut self, lock_key: LockKey) {
        if let Some(slot) = self.locks.slot(&lock_key) {
            self.locks.retire_if_idle(slot);
        }
    }

    /// Grants waiters from the front while they fit; for the first that does
    /// not, invalidates every conflicting holder not already asked.
    fn process(&mut self, now_us: u64, lock_key: LockKey, out: &mut Vec<LockAction>) {
        let recovering = now_us < self.recovering_until_us;
        let Some(slot) = self.locks.slot(&lock_key) else {
            return;
        };
        let lock = &mut self.locks.slab[slot as usize];
        while let Some(front) = lock.queue.as_ref().and_then(|q| q.waiters.front()) {
            if recovering {
                break;
            }
            let (client, mode) = (front.client, front.mode);
            if !lock.conflicts(client, mode) && !lock.invalidating(client) {
                let waiter = lock.queue_mut().waiters.pop_front().expect("front exists");
                lock.set_holder(client, mode);
                self.waiters -= 1;
                self.grants_total += 1;
                let msg = LockMsg {
                    range: lock.range,
                    mode,
                };
                let waited_us = now_us.saturating_sub(waiter.arrived_us);
                out.push(LockAction::Grant {
                    client,
                    request_id: waiter.request_id,
                    command: Command::Lock,
                    msg,
                    waited_us,
                });
                continue;
            }
            for index in 0..lock.holders.len() {
                let (holder, held) = lock.holders[index];
                if holder == client || held.compatible(mode) || lock.invalidating(holder) {
                    continue;
                }
                let target = Mode::invalidation_target(held, mode);
                lock.queue_mut().invalidating.push((holder, target));
                self.invalidations_total += 1;
                out.push(LockAction::Invalidate {
                    client: holder,
                    msg: LockMsg {
                        range: lock.range,
                        mode: target,
                    },
                });
            }
            break;
        }
        lock.tidy();
        self.locks.retire_if_idle(slot);
    }
}

/// Counts a grant and asks for it to be sent (a LOCK answered without waiting).
fn grant(
    grants_total: &mut u64,
    client: ClientId,
    request_id: u64,
    msg: LockMsg,
    out: &mut Vec<LockAction>,
) {
    *grants_total += 1;
    out.push(LockAction::Grant {
        client,
        request_id,
        command: Command::Lock,
        msg,
        waited_us: 0,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(
        server: &mut LockServer,
        client: ClientId,
        zone: u64,
        start: u64,
        end: u64,
    ) -> LockAction {
        let mut out = Vec::new();
        let msg = LockMsg {
            range: LockRange::new(zone, start, end),
            mode: Mode::Read,
        };
        server.request(0, client, 1, msg, &mut out);
        out.pop()
            .expect("a read on a fresh server is answered at once")
    }

    fn refused(action: LockAction) -> Option<ErrorCode> {
        match action {
            LockAction::Refuse { error, .. } => Some(error),
            _ => None,
        }
    }

    #[test]
    fn a_lock_stays_small() {
        // Tens of thousands sit in the map: keep the uncommon parts boxed.
        assert!(
            std::mem::size_of::<Lock>() <= 64,
            "{}",
            std::mem::size_of::<Lock>()
        );
    }

    #[test]
    fn partially_overlapping_ranges_are_refused_identical_and_disjoint_ones_are_not() {
        let mut server = LockServer::new(0);
        assert_eq!(refused(ask(&mut server, 1, 1, 10, 19)), None);
        assert_eq!(
            refused(ask(&mut server, 2, 1, 10, 19)),
            None,
            "the same lock"
        );
        assert_eq!(
            refused(ask(&mut server, 2, 1, 0, 9)),
            None,
            "the neighbour below"
        );
        assert_eq!(
            refused(ask(&mut server, 2, 1, 20, 29)),
            None,
            "the neighbour above"
        );
        assert_eq!(
            refused(ask(&mut server, 2, 2, 15, 25)),
            None,
            "another zone"
        );
        for (start, end) in [(15, 25), (5, 15), (12, 13), (0, 100), (19, 20), (9, 10)] {
            assert_eq!(
                refused(ask(&mut server, 3, 1, start, end)),
                Some(ErrorCode::RangeOverlap),
                "[{start}, {end}]"
            );
        }
        assert_eq!(server.locks(), 4);
        server.check_invariant().unwrap();
    }

    fn lock(server: &mut LockServer, client: ClientId, range: LockRange, mode: Mode) -> LockAction {
        let mut out = Vec::new();
        server.request(0, client, 1, LockMsg { range, mode }, &mut out);
        server.check_invariant().unwrap();
        out.pop().expect("answered at once")
    }

    #[test]
    fn a_released_lock_is_retired_reused_and_not_counted() {
        let mut server = LockServer::new(0);
        let range = LockRange::new(1, 10, 19);
        assert_eq!(refused(lock(&mut server, 1, range, Mode::Write)), None);
        assert_eq!(server.locks(), 1);
        assert_eq!(refused(lock(&mut server, 1, range, Mode::Null)), None);
        assert_eq!(server.locks(), 0);
        assert_eq!(server.locks.retired_count, 1);
        // Taken again, by another client: the retired lock comes back.
        assert_eq!(refused(lock(&mut server, 2, range, Mode::Write)), None);
        assert_eq!((server.locks(), server.locks.retired_count), (1, 0));
        assert_eq!(server.holders(), vec![(range, 2, Mode::Write)]);
        assert_eq!(refused(lock(&mut server, 2, range, Mode::Null)), None);
        // A retired lock does not stand in the way of an overlapping range.
        let overlapping = LockRange::new(1, 15, 25);
        assert_eq!(refused(lock(&mut server, 3, overlapping, Mode::Read)), None);
        assert_eq!((server.locks(), server.locks.retired_count), (1, 0));
        // A live one still does.
        assert_eq!(
            refused(lock(&mut server, 1, range, Mode::Read)),
            Some(ErrorCode::RangeOverlap)
        );
    }

    #[test]
    fn retired_locks_are_swept_past_their_bound() {
        let mut server = LockServer::new(0);
        let held = LockRange::new(2, 0, 0);
        lock(&mut server, 9, held, Mode::Read);
        for start in 0..(RETIRED_MAX as u64 + 10) {
            let range = LockRange::new(1, start, start);
            let mut out = Vec::new();
            server.request(
                0,
                1,
                1,
                LockMsg {
                    range,
                    mode: Mode::Write,
                },
                &mut out,
            );
            server.request(
                0,
                1,
                2,
                LockMsg {
                    range,
                    mode: Mode::Null,
                },
                &mut out,
            );
            assert!(server.locks.index.len() <= RETIRED_MAX + 2);
        }
        server.check_invariant().unwrap();
        assert_eq!(server.locks(), 1);
        assert_eq!(server.holders(), vec![(held, 9, Mode::Read)]);
    }

    #[test]
    fn a_released_burst_gives_its_memory_back() {
        let mut server = LockServer::new(0);
        let burst = 4 * RETIRED_MAX as u64;
        let range = |start| LockRange::new(1, start, start);
        let mut out = Vec::new();
        for start in 0..burst {
            let msg = LockMsg {
                range: range(start),
                mode: Mode::Write,
            };
            server.request(0, 1, 1, msg, &mut out);
        }
        assert_eq!(server.locks(), burst as usize);
        for start in 0..burst - 1 {
            let msg = LockMsg {
                range: range(start),
                mode: Mode::Null,
            };
            server.request(0, 1, 2, msg, &mut out);
        }
        server.check_invariant().unwrap();
        assert_eq!(server.locks(), 1);
        assert!(
            server.locks.slab.len() <= 2 * RETIRED_MAX,
            "{} slab slots kept for {} locks",
            server.locks.slab.len(),
            server.locks.index.len()
        );
        assert_eq!(server.holders(), vec![(range(burst - 1), 1, Mode::Write)]);
    }

    #[test]
    fn an_incompatible_request_waits_for_every_invalidation_reply() {
        let mut server = LockServer::new(0);
        let range = LockRange::new(0, 0, 0);
        let mut out = Vec::new();
        server.request(
            0,
            1,
            1,
            LockMsg {
                range,
                mode: Mode::Read,
            },
            &mut out,
        );
        server.request(
            0,
            2,
            1,
            LockMsg {
                range,
                mode: Mode::Read,
            },
            &mut out,
        );
        out.clear();
        server.request(
            0,
            3,
            1,
            LockMsg {
                range,
                mode: Mode::Write,
            },
            &mut out,
        );
        let invalidated: Vec<ClientId> = out
            .iter()
            .filter_map(|a| match a {
                LockAction::Invalidate { client, msg } if msg.mode == Mode::Null => Some(*client),
                _ => None,
            })
            .collect();
        assert_eq!(invalidated.len(), 2);
        out.clear();
        server.invalidated(
            0,
            1,
            LockMsg {
                range,
                mode: Mode::Null,
            },
            &mut out,
        );
        assert!(
            out.is_empty(),
            "granted before every holder answered: {out:?}"
        );
        server.invalidated(
            0,
            2,
            LockMsg {
                range,
                mode: Mode::Null,
            },
            &mut out,
        );
        assert!(
            matches!(out[..], [LockAction::Grant { client: 3, .. }]),
            "{out:?}"
        );
        server.check_invariant().unwrap();
    }
}
