//! Proves that `NodeAccessor::new` + `verify` never panic on arbitrary
//! bytes or on bit-flipped valid nodes, that they reject what they should,
//! and that a flipped node which still verifies stays usable and valid.

use super::super::layout::{HEADER_LEN, ITEM_LEN};
use super::super::{NodeAccessor, NodeError, NodeMut};
use super::support::fill;
use crate::key::Key;
use rand::{Rng, SeedableRng};

/// Cases per test: thousands, cheap in release builds.
const FUZZ_CASES: usize = 6000;

/// Exercises every read path; none may panic or loop on any bytes.
fn read_everything(node: &NodeAccessor<'_>, rng: &mut impl Rng) -> usize {
    let key = Key::new(rng.gen_range(0..5), rng.gen());
    let mut n = node.items().count() + node.items_rev_from(&Key::MAX).count();
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
        // Reads of a node that only passed `new` must still terminate.
        if let Ok(n) = NodeAccessor::new(&buf) {
            read_everything(&n, &mut rng);
        }
        match NodeAccessor::new(&buf).and_then(|n| n.verify().map(|()| n)) {
            Err(_) => rejected += 1,
            Ok(_) => {
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

/// Reads the u16 at `off`.
fn u16_at(b: &[u8], off: usize) -> usize {
    u16::from_le_bytes([b[off], b[off + 1]]) as usize
}

#[test]
fn verify_names_specific_corruptions() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0003);
    let mut buf = vec![0u8; 4096];
    fill(&mut buf, 0, &mut rng, 40);
    let slots = super::super::layout::Geometry::new(4096, 0).hash_slots;
    let hash_at = 4096 - 2 * slots;
    // (what, substring the message must contain, corruption)
    type Corruption = (&'static str, &'static str, fn(&mut [u8], usize));
    let corruptions: [Corruption; 9] = [
        ("item count", "", |b, _| b[2] = b[2].wrapping_add(1)),
        ("AVL root", "", |b, _| b[4] = b[4].wrapping_add(2)),
        ("reserved header byte", "reserved", |b, _| b[1] = 1),
        ("stored height", "height", |b, _| {
            b[16 + 24] = b[16 + 24].wrapping_add(5)
        }),
        ("free count", "free value bytes", |b, _| {
            b[12] = b[12].wrapping_add(1)
        }),
        ("value owner", "owner", |b, _| {
            let end = u16_at(b, 16 + 20) + u16_at(b, 16 + 22);
            b[end] ^= 0x40;
        }),
        ("swapped keys", "out of order", |b, _| {
            let (first, second) = (b[16..32].to_vec(), b[42..58].to_vec());
            b[16..32].copy_from_slice(&second);
            b[42..58].copy_from_slice(&first);
        }),
        ("duplicate hash slot", "hash slot", |b, hash_at| {
            let slots = (hash_at..b.len()).step_by(2);
            let filled = slots.clone().find(|&s| u16_at(b, s) != 0).unwrap();
            let empty = slots.clone().find(|&s| u16_at(b, s) == 0).unwrap();
            let item = u16_at(b, filled) as u16;
            b[empty..empty + 2].copy_from_slice(&item.to_le_bytes());
        }),
        ("AVL cycle", "", |b, _| {
            // The root's left link points back at the root.
            let root = b[4..6].to_vec();
            let at = u16_at(b, 4) + 16;
            b[at..at + 2].copy_from_slice(&root);
        }),
    ];
    for (what, expect, corrupt) in corruptions {
        let mut copy = buf.clone();
        corrupt(&mut copy, hash_at);
        match NodeAccessor::new(&copy).and_then(|n| n.verify().map(|()| n)) {
            Ok(_) => panic!("{what}: corruption not detected"),
            Err(NodeError::Corrupt(msg)) => assert!(msg.contains(expect), "{what}: {msg}"),
            Err(e) => panic!("{what}: {e:?}"),
        }
        // Reads of the corrupt node still terminate without panicking.
        if let Ok(node) = NodeAccessor::new(&copy) {
            assert!(node.items().count() <= node.item_count());
            read_everything(&node, &mut rng);
        }
    }
}
