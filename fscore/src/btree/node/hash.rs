//! The leaf hash table: `hash_slots` u16 item offsets at the end of the
//! payload, 0 = empty. Linear probing from `home_slot(key)`, wrapping at the
//! end. Deletion shifts later entries of the probe run back into the hole
//! (backshift), so there are no tombstones and a probe stops at the first
//! empty slot. The load factor is at most 1/2 (`items_max * 2` slots).

use super::layout::*;
use crate::key::Key;

#[inline]
fn slot_pos(geo: &Geometry, slot: usize) -> usize {
    geo.values_end + slot * HASH_SLOT_LEN
}

#[inline]
pub(super) fn slot(buf: &[u8], geo: &Geometry, slot: usize) -> usize {
    rd16(buf, slot_pos(geo, slot)) as usize
}

#[inline]
fn set_slot(buf: &mut [u8], geo: &Geometry, slot: usize, item: usize) {
    wr16(buf, slot_pos(geo, slot), item as u16);
}

#[inline]
fn next(geo: &Geometry, slot: usize) -> usize {
    if slot + 1 == geo.hash_slots {
        0
    } else {
        slot + 1
    }
}

/// Finds `key`: (slot index, item offset).
#[inline]
pub(super) fn find(buf: &[u8], geo: &Geometry, key: &Key) -> Option<(usize, usize)> {
    let want = key_ord(key);
    let mut i = home_slot(key, geo.hash_slots);
    for _ in 0..geo.hash_slots {
        let item = slot(buf, geo, i);
        if item == 0 {
            return None;
        }
        if item_key_ord(buf, item) == want {
            return Some((i, item));
        }
        i = next(geo, i);
    }
    None
}

/// Adds `item` (whose key is `key`, not yet in the table).
pub(super) fn insert(buf: &mut [u8], geo: &Geometry, key: &Key, item: usize) {
    let mut i = home_slot(key, geo.hash_slots);
    for _ in 0..geo.hash_slots {
        if slot(buf, geo, i) == 0 {
            set_slot(buf, geo, i, item);
            return;
        }
        i = next(geo, i);
    }
    debug_assert!(false, "hash table full: load factor bound broken");
}

/// Points the slot of `key` at `to` (the item moved from `from`).
pub(super) fn repoint(buf: &mut [u8], geo: &Geometry, key: &Key, from: usize, to: usize) {
    let mut i = home_slot(key, geo.hash_slots);
    for _ in 0..geo.hash_slots {
        let item = slot(buf, geo, i);
        if item == from {
            set_slot(buf, geo, i, to);
            return;
        }
        if item == 0 {
            break;
        }
        i = next(geo, i);
    }
    debug_assert!(false, "moved item missing from the hash table");
}

/// Empties slot `hole` and shifts the rest of its probe run back so every
/// remaining entry stays reachable from its home slot.
pub(super) fn remove_at(buf: &mut [u8], geo: &Geometry, mut hole: usize) {
    let slots = geo.hash_slots;
    let mut j = hole;
    for _ in 0..slots {
        j = next(geo, j);
        let item = slot(buf, geo, j);
        if item == 0 {
            break;
        }
        let home = home_slot(&item_key(buf, item), slots);
        // The entry may move back to the hole if the hole lies within its
        // probe run so far: cyclically in [home, j).
        let dist_hole = (hole + slots - home) % slots;
        let dist_j = (j + slots - home) % slots;
        if dist_hole < dist_j {
            set_slot(buf, geo, hole, item);
            hole = j;
        }
    }
    set_slot(buf, geo, hole, 0);
}
