//! Shared helpers: building nodes, comparing them with a `BTreeMap` model.

use super::super::{NodeAccessor, NodeMut};
use crate::key::Key;
use std::collections::BTreeMap;

pub(super) type Model = BTreeMap<Key, Vec<u8>>;

/// Payload sizes under test: tiny (many splits), a 4 KiB block, large.
pub(super) const PAYLOADS: [usize; 5] = [512, 1024, 4096, 16384, 65536];

/// A value of `len` bytes derived from `seed`, so a replace is visible.
pub(super) fn value_of(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add(i as u8).wrapping_mul(31))
        .collect()
}

/// Runs `verify` and compares every read path against the model.
pub(super) fn check(node: &NodeAccessor<'_>, model: &Model) {
    node.verify()
        .unwrap_or_else(|e| panic!("verify failed: {e:?}"));
    assert_eq!(node.item_count(), model.len());
    let items: Vec<(Key, Vec<u8>)> = node.items().map(|(k, v)| (k, v.to_vec())).collect();
    let expect: Vec<(Key, Vec<u8>)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
    assert_eq!(items, expect, "items() differs from the model");
    let rev: Vec<Key> = node.items_rev_from(&Key::MAX).map(|(k, _)| k).collect();
    let expect_rev: Vec<Key> = model.keys().rev().copied().collect();
    assert_eq!(
        rev, expect_rev,
        "items_rev_from(MAX) differs from the model"
    );
    let used: usize = model
        .values()
        .map(|v| NodeAccessor::item_bytes(v.len()))
        .sum();
    assert_eq!(node.used_bytes(), used, "used_bytes accounting");
    assert_eq!(node.used_bytes() + node.free_bytes(), node.capacity_bytes());
    assert_eq!(node.first().map(|(k, _)| k), model.keys().next().copied());
    assert_eq!(
        node.last().map(|(k, _)| k),
        model.keys().next_back().copied()
    );
}

/// Fills a node at `level` with random keys (hi in 1..=4) and values until
/// it is full.
pub(super) fn fill(
    buf: &mut [u8],
    level: u8,
    rng: &mut impl rand::Rng,
    value_len_max: usize,
) -> Model {
    let mut node = NodeMut::init(buf, level);
    let mut model = Model::new();
    let mut misses = 0;
    while misses < 8 {
        let key = Key::new(rng.gen_range(1..=4), rng.gen());
        let value = value_of(rng.gen(), rng.gen_range(0..=value_len_max));
        match node.insert(&key, &value) {
            Ok(_) => {
                model.insert(key, value);
            }
            Err(_) => misses += 1,
        }
    }
    model
}
