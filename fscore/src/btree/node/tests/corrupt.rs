//! Proves that `NodeAccessor::new` + `verify` never panic on arbitrary
//! bytes or on bit-flipped valid nodes, that they reject what they should,
//! and that a flipped node which still verifies stays usable and valid.

use super::super::layout::{HEADER_LEN, ITEM_LEN};
use super::super::{NodeAccessor, NodeMut};
use super::support::fill;
use crate::key::Key;
use rand::{Rng, SeedableRng};

/// Cases per test: thousands, cheap in release builds.
const FUZZ_CASES: usize = 6000;

/// Exercises every read path; none may panic or loop on any bytes.
fn read_everything(node: &NodeAccessor<'_>, rng: &mut impl Rng) -> usize {
    let key = Key::new(rng.gen_range(0..5), rng.gen());
    let mut n = node.items().count() + node.items_rev().count();
    n += node.items_from(&key).count() + node.items_rev_from(&key).count();
    n += node.get(&key).map_or(0, |v| v.len());
    n += node.seek_ge(&key).is_some() as usize + node.seek_le(&key).is_some() as usize;
    n += node.first().is_some() as usize + node.last().is_some() as usize;
    n + node.used_bytes() + node.has_room(8) as usize + node.wants_join() as usize
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0001);
    let mut accepted = 0;
    for case in 0..FUZZ_CASES {
        let len = [100, 512, 1000, 4096, 65536, 70000][case % 6];
        let mut buf = vec![0u8; len];
        rng.fill(&mut buf[..]);
        if case % 3 == 0 && len >= 16 {
            // A plausible header lets the walk get further.
            buf[1] = 0;
            buf[6] = 0;
            buf[7] = 0;
            buf[2] = rng.gen_range(0..8);
            buf[3] = 0;
        }
        if let Ok(node) = NodeAccessor::new(&buf) {
            read_everything(&node, &mut rng);
            if node.verify().is_ok() {
                accepted += 1;
            }
        }
    }
    // Random bytes essentially never form a valid non-trivial node.
    assert!(
        accepted < FUZZ_CASES / 100,
        "{accepted} random buffers verified"
    );
}

#[test]
fn bit_flips_of_valid_nodes_never_panic() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0002);
    let mut rejected = 0;
    for case in 0..FUZZ_CASES {
        let payload = [512, 1024, 4096][case % 3];
        let level = (case / 3 % 2) as u8;
        let mut buf = vec![0u8; payload];
        fill(&mut buf, level, &mut rng, 48);
        let mut node = NodeMut::open(&mut buf).unwrap();
        for _ in 0..rng.gen_range(0..20) {
            node.delete(&Key::new(rng.gen_range(0..4), rng.gen()));
            let first = node.accessor().first().map(|(k, _)| k);
            if let Some(k) = first {
                node.delete(&k);
            }
        }
        node.accessor().verify().unwrap();
        let span = node.accessor().item_count() * ITEM_LEN + HEADER_LEN;
        drop(node);
        // Flip 1..=3 bits, mostly in the header and item array.
        for _ in 0..rng.gen_range(1..=3) {
            let limit = if rng.gen_bool(0.7) { span } else { payload };
            let pos = rng.gen_range(0..limit);
            buf[pos] ^= 1u8 << rng.gen_range(0..8);
        }
        match NodeAccessor::new(&buf).and_then(|n| n.verify().map(|()| n)) {
            Err(_) => rejected += 1,
            Ok(n) => {
                read_everything(&n, &mut rng);
                // Still valid: editing it must keep it valid.
                let mut m = NodeMut::open(&mut buf).unwrap();
                let key = Key::new(rng.gen_range(0..4), rng.gen());
                let _ = m.insert(&key, &[1, 2, 3]);
                m.accessor().verify().unwrap();
                assert!(m.delete(&key) || !m.accessor().has_room(3));
                m.accessor().verify().unwrap();
            }
        }
    }
    assert!(
        rejected > FUZZ_CASES / 4,
        "only {rejected} flipped nodes rejected"
    );
}

#[test]
fn verify_names_specific_corruptions() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0003);
    let mut buf = vec![0u8; 4096];
    fill(&mut buf, 0, &mut rng, 40);
    let corruptions: [(&str, fn(&mut [u8])); 6] = [
        ("item count", |b| b[2] = b[2].wrapping_add(1)),
        ("AVL root", |b| b[4] = b[4].wrapping_add(2)),
        ("reserved", |b| b[1] = 1),
        ("stored height", |b| b[16 + 24] = b[16 + 24].wrapping_add(5)),
        ("free value bytes", |b| b[12] = b[12].wrapping_add(1)),
        ("value owner", |b| {
            let off = u16::from_le_bytes([b[16 + 20], b[16 + 21]]) as usize;
            let len = u16::from_le_bytes([b[16 + 22], b[16 + 23]]) as usize;
            b[off + len] ^= 0x40;
        }),
    ];
    for (what, corrupt) in corruptions {
        let mut copy = buf.clone();
        corrupt(&mut copy);
        let result = NodeAccessor::new(&copy).and_then(|n| n.verify());
        assert!(result.is_err(), "{what}: corruption not detected");
    }
}
