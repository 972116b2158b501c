//! Proves that random insert/replace/delete/lookup/seek/scan sequences on a
//! node agree with a `BTreeMap` model, that `verify` accepts the node after
//! every operation, and that `Err(Full)` leaves the bytes untouched and only
//! happens when the item really cannot fit.

use super::super::layout::hdr_value_free;
use super::super::{NodeAccessor, NodeError, NodeMut};
use super::support::{check, value_of, Model, PAYLOADS};
use crate::key::Key;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Insert or replace; `big` picks the length from up to the node's
    /// largest value, else from 0..=64 bytes.
    Insert {
        key: (u8, u8),
        big: bool,
        len_frac: u16,
        seed: u8,
    },
    Delete {
        key: (u8, u8),
    },
    Lookup {
        key: (u8, u8),
    },
}

/// Keys from a small domain (so operations collide) that includes the
/// extremes of both halves and the sign bit.
fn key_of((hi, lo): (u8, u8)) -> Key {
    let hi = [0, 1 << 63, u64::MAX][hi as usize % 3];
    let lo = if lo == u8::MAX {
        u64::MAX
    } else {
        lo as u64 * 3
    };
    Key::new(hi, lo)
}

fn op() -> impl Strategy<Value = Op> {
    let key = (any::<u8>(), any::<u8>());
    prop_oneof![
        5 => (key, any::<bool>(), any::<u16>(), any::<u8>())
            .prop_map(|(key, big, len_frac, seed)| Op::Insert { key, big, len_frac, seed }),
        3 => key.prop_map(|key| Op::Delete { key }),
        2 => key.prop_map(|key| Op::Lookup { key }),
    ]
}

fn value_len(node: &NodeAccessor<'_>, big: bool, len_frac: u16) -> usize {
    if big {
        len_frac as usize * node.value_len_max() / u16::MAX as usize
    } else {
        len_frac as usize % 65
    }
}

/// Checks every read path for `key` against the model.
fn check_lookup(node: &NodeAccessor<'_>, model: &Model, key: &Key) {
    assert_eq!(node.get(key), model.get(key).map(|v| v.as_slice()));
    let ge = model.range(key..).next().map(|(k, v)| (*k, v.as_slice()));
    assert_eq!(node.seek_ge(key), ge);
    let le = model
        .range(..=key)
        .next_back()
        .map(|(k, v)| (*k, v.as_slice()));
    assert_eq!(node.seek_le(key), le);
    let from: Vec<Key> = node.items_from(key).map(|(k, _)| k).collect();
    assert_eq!(
        from,
        model.range(key..).map(|(k, _)| *k).collect::<Vec<_>>()
    );
    let back: Vec<Key> = node.items_rev_from(key).map(|(k, _)| k).collect();
    assert_eq!(
        back,
        model
            .range(..=key)
            .rev()
            .map(|(k, _)| *k)
            .collect::<Vec<_>>()
    );
}

fn apply(node: &mut NodeMut<'_>, model: &mut Model, op: &Op) {
    match *op {
        Op::Insert {
            key,
            big,
            len_frac,
            seed,
        } => {
            let key = key_of(key);
            let value = value_of(seed, value_len(&node.accessor(), big, len_frac));
            let before = node.accessor().buf.to_vec();
            let free = node.accessor().free_bytes();
            let has_room = node.accessor().has_room(value.len());
            match node.insert(&key, &value) {
                Ok(old) => {
                    assert_eq!(old, model.get(&key).map(|v| v.len()));
                    assert!(old.is_some() || has_room, "insert succeeded without room");
                    model.insert(key, value);
                }
                Err(NodeError::Full) => {
                    assert_eq!(node.accessor().buf, &before[..], "Full changed the node");
                    match model.get(&key) {
                        Some(old) => assert!(value.len() > old.len() + free),
                        None => assert!(!has_room, "Full although has_room"),
                    }
                }
                Err(e) => panic!("insert: {e:?}"),
            }
        }
        Op::Delete { key } => {
            let key = key_of(key);
            assert_eq!(node.delete(&key), model.remove(&key).is_some());
        }
        Op::Lookup { key } => check_lookup(&node.accessor(), model, &key_of(key)),
    }
}

fn run(payload: usize, level: u8, ops: &[Op]) {
    let mut buf = vec![0xa5u8; payload];
    let mut node = NodeMut::init(&mut buf, level);
    let mut model = Model::new();
    for op in ops {
        apply(&mut node, &mut model, op);
        check(&node.accessor(), &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn node_matches_model(payload in 0..PAYLOADS.len(), level in 0u8..2, ops in prop::collection::vec(op(), 1..300)) {
        run(PAYLOADS[payload], level, &ops);
    }

    /// Churn on a nearly full node: replaces with changing sizes and deletes
    /// fragment the value area, so inserts must compact.
    #[test]
    fn fragmentation_churn_compacts(payload in 0..PAYLOADS.len(), seed in any::<u64>()) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut buf = vec![0u8; PAYLOADS[payload]];
        let mut node = NodeMut::init(&mut buf, 0);
        let mut model = Model::new();
        let mut compactions = 0;
        // Enough keys that their average items would overfill the node by
        // half, so it runs full and every insert competes for space.
        let node_view = node.accessor();
        let item_avg = NodeAccessor::item_bytes(node_view.value_len_max() / 4);
        let keys = node_view.capacity_bytes() * 3 / 2 / item_avg;
        for _ in 0..keys * 12 {
            let key = Key::new(0, rng.gen_range(0..keys as u64));
            let free_before = hdr_value_free(node.accessor().buf);
            if rng.gen_bool(0.8) {
                let value = value_of(rng.gen(), rng.gen_range(0..=node.accessor().value_len_max() / 2));
                if let Ok(old) = node.insert(&key, &value) {
                    prop_assert_eq!(old, model.get(&key).map(|v| v.len()));
                    model.insert(key, value);
                }
            } else {
                prop_assert_eq!(node.delete(&key), model.remove(&key).is_some());
            }
            // Only compaction returns counted free space to the gap.
            if free_before > 0 && hdr_value_free(node.accessor().buf) == 0 {
                compactions += 1;
            }
            check(&node.accessor(), &model);
        }
        prop_assert!(compactions > 0, "the churn never compacted");
    }
}

#[test]
fn empty_node_reads_nothing_and_verifies() {
    for payload in PAYLOADS {
        for level in [0, 1, 7] {
            let mut buf = vec![0xffu8; payload];
            let node = NodeMut::init(&mut buf, level);
            let node = node.accessor();
            node.verify().unwrap();
            assert_eq!(node.level(), level);
            assert_eq!(node.get(&Key::MIN), None);
            assert_eq!(node.seek_ge(&Key::MIN), None);
            assert_eq!(node.seek_le(&Key::MAX), None);
            assert_eq!(node.items().count(), 0);
            assert!(node.wants_join());
            assert!(node.has_room(node.value_len_max()));
            assert!(!node.has_room(node.value_len_max() + 1));
        }
    }
}

#[test]
fn a_full_leaf_keeps_its_hash_load_at_most_half() {
    // Empty values pack the most items: the item cap, not bytes, stops them.
    for payload in PAYLOADS {
        let mut buf = vec![0u8; payload];
        let mut node = NodeMut::init(&mut buf, 0);
        let mut lo = 0;
        while node.insert(&Key::new(1, lo), &[]).is_ok() {
            lo += 1;
        }
        let node = node.accessor();
        node.verify().unwrap();
        assert_eq!(node.item_count(), node.geo.items_max);
        assert!(node.item_count() * 2 <= node.geo.hash_slots);
    }
}
