//! Proves that `split_into` and `refill_from` preserve contents and key order
//! across the pair, leave both nodes valid, balance a split by bytes, and
//! leave room for a maximal insert in either half; and that the split for an
//! insert at a node's right end moves at most its last item, and only then.

use super::super::{NodeAccessor, NodeMut};
use super::support::{check, fill, Model, PAYLOADS};
use crate::key::Key;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

fn contents(node: &NodeAccessor<'_>) -> Model {
    node.items().map(|(k, v)| (k, v.to_vec())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    #[test]
    fn split_of_a_full_node_is_balanced_and_roomy(payload in 0..PAYLOADS.len(), level in 0u8..2,
                                                  small in any::<bool>(), seed in any::<u64>()) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let payload = PAYLOADS[payload];
        let mut left_buf = vec![0u8; payload];
        let vmax = NodeMut::init(&mut left_buf, level).accessor().value_len_max();
        let model = fill(&mut left_buf, level, &mut rng, if small { 64.min(vmax) } else { vmax });
        let mut right_buf = vec![0x5au8; payload];
        let mut left = NodeMut::open(&mut left_buf).unwrap();
        let mut right = NodeMut::init(&mut right_buf, level);
        let total = left.accessor().used_bytes();
        left.split_into(&mut right);
        let (l, r) = (left.accessor(), right.accessor());
        l.verify().unwrap();
        r.verify().unwrap();
        prop_assert!(l.item_count() > 0 && r.item_count() > 0);
        let (lc, rc) = (contents(&l), contents(&r));
        prop_assert!(lc.keys().next_back() < rc.keys().next());
        let mut union = lc.clone();
        union.extend(rc.clone());
        prop_assert_eq!(&union, &model);
        check(&l, &lc);
        check(&r, &rc);
        // Balanced by bytes: neither half exceeds half plus half an item.
        let item_max = model.values().map(|v| NodeAccessor::item_bytes(v.len())).max().unwrap();
        prop_assert_eq!(l.used_bytes() + r.used_bytes(), total);
        prop_assert!(2 * l.used_bytes() <= total + item_max, "left {} of {}", l.used_bytes(), total);
        prop_assert!(2 * r.used_bytes() <= total + item_max, "right {} of {}", r.used_bytes(), total);
        // Whichever half receives the insert that overflowed has room for it.
        prop_assert!(l.has_room(l.value_len_max()));
        prop_assert!(r.has_room(r.value_len_max()));
    }

    #[test]
    fn an_insert_at_the_right_end_splits_off_at_most_one_item(payload in 0..PAYLOADS.len(), level in 0u8..2,
                                                             seed in any::<u64>()) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let payload = PAYLOADS[payload];
        let mut left_buf = vec![0u8; payload];
        let model = fill(&mut left_buf, level, &mut rng, 64);
        prop_assume!(model.len() >= 3);
        let keys: Vec<Key> = model.keys().copied().collect();
        let (second_last, last) = (keys[keys.len() - 2], keys[keys.len() - 1]);
        let just_below_last = Key::new(last.hi, last.lo.wrapping_sub(1));
        prop_assume!(second_last < just_below_last && just_below_last < last);

        // Further left: no end split, nothing changes.
        let mut right_buf = vec![0u8; payload];
        let mut left = NodeMut::open(&mut left_buf).unwrap();
        let mut right = NodeMut::init(&mut right_buf, level);
        prop_assert!(!left.split_at_end_for(&mut right, &Key::new(0, 0)));
        prop_assert!(!left.split_at_end_for(&mut right, &keys[keys.len() / 2]));
        prop_assert_eq!(contents(&left.accessor()), model.clone());
        prop_assert_eq!(right.accessor().item_count(), 0);

        // Above every key: nothing moves, the new key starts the right node.
        let mut above_buf = left_buf.clone();
        let mut above = NodeMut::open(&mut above_buf).unwrap();
        let mut right = NodeMut::init(&mut right_buf, level);
        prop_assert!(above.split_at_end_for(&mut right, &Key::new(9, 0)));
        prop_assert_eq!(contents(&above.accessor()), model.clone());
        prop_assert_eq!(right.accessor().item_count(), 0);
        right.insert(&Key::new(9, 0), b"appended").unwrap();
        right.accessor().verify().unwrap();

        // Between the last two keys: the last item moves, the key joins it.
        let mut left = NodeMut::open(&mut left_buf).unwrap();
        let mut right = NodeMut::init(&mut right_buf, level);
        prop_assert!(left.split_at_end_for(&mut right, &just_below_last));
        let (l, r) = (left.accessor(), right.accessor());
        l.verify().unwrap();
        r.verify().unwrap();
        let mut kept = model.clone();
        let moved = kept.split_off(&last);
        prop_assert_eq!(contents(&l), kept.clone());
        prop_assert_eq!(contents(&r), moved.clone());
        check(&l, &kept);
        check(&r, &moved);
        right.insert(&just_below_last, b"inserted").unwrap();
        right.accessor().verify().unwrap();
    }

    #[test]
    fn refill_moves_edge_items_in_order(payload in 0..PAYLOADS.len(), level in 0u8..2, from_front in any::<bool>(),
                                        goal_frac in 0usize..=100, seed in any::<u64>()) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let payload = PAYLOADS[payload];
        // Two neighbours: `dst` holds keys with hi 0 (left) or hi 9 (right)
        // of `src`, whose keys have hi 1..4.
        let mut src_buf = vec![0u8; payload];
        let vmax = NodeMut::init(&mut src_buf, level).accessor().value_len_max();
        let src_model = fill(&mut src_buf, level, &mut rng, vmax.min(200));
        let mut dst_buf = vec![0u8; payload];
        let mut dst = NodeMut::init(&mut dst_buf, level);
        let mut dst_model = Model::new();
        for _ in 0..rng.gen_range(0..4) {
            let key = Key::new(if from_front { 0 } else { 9 }, rng.gen());
            dst.insert(&key, &[7; 10]).unwrap();
            dst_model.insert(key, vec![7; 10]);
        }
        let mut src = NodeMut::open(&mut src_buf).unwrap();
        let goal = dst.accessor().capacity_bytes() * goal_frac / 100;
        let moved = dst.refill_from(&mut src, from_front, goal);
        let (d, s) = (dst.accessor(), src.accessor());
        d.verify().unwrap();
        s.verify().unwrap();
        let (dc, sc) = (contents(&d), contents(&s));
        prop_assert_eq!(dc.len(), dst_model.len() + moved);
        let mut union = dc.clone();
        union.extend(sc.clone());
        let mut expect = src_model.clone();
        expect.extend(dst_model.clone());
        prop_assert_eq!(union, expect);
        // The moved items are src's edge: order across the pair holds.
        let (lower, upper) = if from_front { (&dc, &sc) } else { (&sc, &dc) };
        if let (Some(l), Some(u)) = (lower.keys().next_back(), upper.keys().next()) {
            prop_assert!(l < u, "{:?} !< {:?}", l, u);
        }
        // It stopped for a reason: goal reached, src empty, or no room.
        let next = if from_front { s.first() } else { s.last() };
        let stopped_for_room = next.is_some_and(|(_, v)| !d.has_room(v.len()));
        prop_assert!(d.used_bytes() >= goal || sc.is_empty() || stopped_for_room);
    }
}

/// Two neighbours below a quarter full join completely: `refill_from` with
/// an unbounded goal empties the source into the destination, in order.
#[test]
fn join_of_two_quarter_nodes_empties_the_source() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x701a);
    for payload in PAYLOADS {
        for (level, from_front) in [(0, true), (0, false), (1, true), (1, false)] {
            let mut dst_buf = vec![0u8; payload];
            let mut src_buf = vec![0u8; payload];
            let mut dst = NodeMut::init(&mut dst_buf, level);
            let mut src = NodeMut::init(&mut src_buf, level);
            let mut model = Model::new();
            let (dst_hi, src_hi) = if from_front { (0, 1) } else { (1, 0) };
            // Stop while an insert (at most 68 bytes) keeps both below a quarter.
            while (src.accessor().used_bytes().max(dst.accessor().used_bytes()) + 68) * 4 < payload
            {
                let (dk, sk) = (Key::new(dst_hi, rng.gen()), Key::new(src_hi, rng.gen()));
                let value = vec![rng.gen::<u8>(); rng.gen_range(0..40)];
                dst.insert(&dk, &value).unwrap();
                src.insert(&sk, &value).unwrap();
                model.insert(dk, value.clone());
                model.insert(sk, value);
                // Churn so both value areas are fragmented.
                if rng.gen_bool(0.3) {
                    dst.delete(&dk);
                    src.delete(&sk);
                    model.remove(&dk);
                    model.remove(&sk);
                }
            }
            assert!(dst.accessor().wants_join() && src.accessor().wants_join());
            let count = src.accessor().item_count();
            assert_eq!(dst.refill_from(&mut src, from_front, usize::MAX), count);
            assert_eq!(src.accessor().item_count(), 0);
            check(&src.accessor(), &Model::new());
            check(&dst.accessor(), &model);
        }
    }
}
