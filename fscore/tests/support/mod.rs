//! Shared pieces of the integration tests: a seeded random workload run
//! against a `Pool` and a `BTreeMap` model, with data extents referenced
//! from values so data-space accounting can be checked.
#![allow(dead_code)]

use fscore::{Error, Extent, Key, MkfsOptions, OpenOptions, Pool, SimDisk};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

pub type Model = BTreeMap<Key, Vec<u8>>;

/// Keys with this `hi` hold a data extent (start, len) in their value.
pub const DATA_KEY_HI: u64 = 1;

/// The seed of a randomized test: `env_name` replays a failure.
pub fn seed_from_env(env_name: &str) -> u64 {
    let seed = match std::env::var(env_name) {
        Ok(text) => text.parse().expect("seed must be a u64"),
        Err(_) => rand::random(),
    };
    println!("seed {seed} (replay with {env_name}={seed})");
    seed
}

pub fn encode_extent(extent: Extent) -> Vec<u8> {
    let mut out = extent.start.to_le_bytes().to_vec();
    out.extend_from_slice(&extent.len.to_le_bytes());
    out
}

/// The data extents a value references (for `check_on`).
pub fn data_refs(key: &Key, value: &[u8]) -> Vec<Extent> {
    if key.hi != DATA_KEY_HI || value.len() != 16 {
        return Vec::new();
    }
    let start = u64::from_le_bytes(value[..8].try_into().unwrap());
    let len = u64::from_le_bytes(value[8..].try_into().unwrap());
    vec![Extent::new(start, len)]
}

pub fn new_pool(meta_bytes: u64, data_bytes: u64, block_bytes: u32) -> (SimDisk, SimDisk) {
    let meta = SimDisk::new(meta_bytes);
    let data = SimDisk::new(data_bytes);
    let mut opts = MkfsOptions::new(meta_bytes, data_bytes);
    opts.meta_block_bytes = block_bytes;
    Pool::mkfs_on(Box::new(meta.clone()), Box::new(data.clone()), &opts).unwrap();
    (meta, data)
}

pub fn open(meta: &SimDisk, data: &SimDisk) -> Result<Pool, Error> {
    let opts = OpenOptions {
        cache_bytes: 64 << 10,
        ..OpenOptions::default()
    };
    Pool::open_on(Box::new(meta.clone()), Box::new(data.clone()), &opts)
}

/// Everything in the pool, in key order.
pub fn contents(pool: &Pool) -> Result<Model, Error> {
    Ok(pool
        .range(&Key::MIN, &Key::MAX, usize::MAX)?
        .into_iter()
        .collect())
}

/// A workload: random inserts, updates, deletes, data allocations and
/// frees, and commits, all decided by a seeded generator, so the same seed
/// replays the same operations (up to the point where a crash stops it).
pub struct Workload {
    rng: SmallRng,
    pub model: Model,
    /// Model as of each commit, by the seq that commit writes (includes a
    /// commit that was in flight when the disk failed).
    pub by_seq: BTreeMap<u64, Model>,
    pub keys_max: u64,
    pub commit_every_max: u32,
    /// Changes made while a commit is being written (see `commit`).
    pub overlap_ops_max: u32,
    /// Data extents allocated and not referenced yet, as a volume's writes
    /// whose data is still in flight: commits carry them
    /// (`begin_commit_carrying`) until they are referenced or freed.
    pub in_flight: Vec<Extent>,
    pub in_flight_max: usize,
}

impl Workload {
    pub fn new(seed: u64, initial_seq: u64, initial: Model) -> Workload {
        let mut by_seq = BTreeMap::new();
        by_seq.insert(initial_seq, initial.clone());
        Workload {
            rng: SmallRng::seed_from_u64(seed),
            model: initial,
            by_seq,
            keys_max: 400,
            commit_every_max: 40,
            overlap_ops_max: 3,
            in_flight: Vec::new(),
            in_flight_max: 4,
        }
    }

    /// Runs `ops` operations; stops at the first I/O failure (a crash).
    pub fn run(&mut self, pool: &Pool, ops: usize) -> Result<(), Error> {
        for _ in 0..ops {
            self.step(pool)?;
            if self.rng.gen_ratio(1, self.commit_every_max) {
                self.commit(pool)?;
            }
        }
        Ok(())
    }

    /// One random change (NoSpace is an accepted outcome).
    fn step(&mut self, pool: &Pool) -> Result<(), Error> {
        let value_len_max = pool.value_len_max();
        let result = match self.rng.gen_range(0..100) {
            0..=49 => self.insert(pool, value_len_max),
            50..=74 => self.delete(pool),
            75..=84 => self.alloc_data(pool),
            85..=92 => self.free_data(pool),
            93..=95 => self.start_in_flight(pool),
            96..=98 => self.land_in_flight(pool),
            _ => Ok(()),
        };
        match result {
            Err(Error::NoSpace) => Ok(()),
            other => other,
        }
    }

    /// Commits in two phases, as the volume does: changes made between
    /// `begin_commit` and `finish` (up to `overlap_ops_max`) belong to the
    /// next transaction and must not show up in this commit after a crash.
    pub fn commit(&mut self, pool: &Pool) -> Result<(), Error> {
        self.by_seq.insert(pool.info().seq + 1, self.model.clone());
        let pending = pool.begin_commit_carrying(&self.in_flight)?;
        for _ in 0..self.rng.gen_range(0..=self.overlap_ops_max) {
            self.step(pool)?;
        }
        pending.finish()
    }

    fn insert(&mut self, pool: &Pool, value_len_max: usize) -> Result<(), Error> {
        let key = Key::new(0, self.rng.gen_range(0..self.keys_max));
        let len = if self.rng.gen_ratio(1, 8) {
            self.rng.gen_range(0..=value_len_max)
        } else {
            self.rng.gen_range(0..48)
        };
        let fill: u8 = self.rng.gen();
        let value: Vec<u8> = (0..len).map(|at| fill.wrapping_add(at as u8)).collect();
        pool.insert(&key, &value)?;
        self.model.insert(key, value);
        Ok(())
    }

    fn delete(&mut self, pool: &Pool) -> Result<(), Error> {
        let key = Key::new(0, self.rng.gen_range(0..self.keys_max));
        let present = pool.delete(&key)?;
        assert_eq!(
            present,
            self.model.remove(&key).is_some(),
            "delete of {key:?}"
        );
        Ok(())
    }

    fn alloc_data(&mut self, pool: &Pool) -> Result<(), Error> {
        let extent = pool.alloc_data(self.rng.gen_range(1..=8))?;
        self.reference(pool, extent)
    }

    /// Inserts an item referencing a newly allocated data extent.
    fn reference(&mut self, pool: &Pool, extent: Extent) -> Result<(), Error> {
        let key = Key::new(DATA_KEY_HI, self.rng.gen());
        let value = encode_extent(extent);
        match pool.insert(&key, &value) {
            Ok(()) => {}
            // Give the extent back; a free after a refused change succeeds
            // unless metadata is exhausted, which these tests size away.
            Err(Error::NoSpace) => return pool.free_data(extent),
            Err(error) => return Err(error),
        }
        self.model.insert(key, value);
        Ok(())
    }

    /// Allocates data space for a write whose data is not there yet.
    fn start_in_flight(&mut self, pool: &Pool) -> Result<(), Error> {
        if self.in_flight.len() < self.in_flight_max {
            let extent = pool.alloc_data(self.rng.gen_range(1..=8))?;
            self.in_flight.push(extent);
        }
        Ok(())
    }

    /// Lands every in-flight allocation (before a plain `Pool::commit`).
    pub fn land_all_in_flight(&mut self, pool: &Pool) -> Result<(), Error> {
        while !self.in_flight.is_empty() {
            self.land_in_flight(pool)?;
        }
        Ok(())
    }

    /// The data of an in-flight allocation landed: reference it (or, one
    /// time in four, the write failed: free it).
    fn land_in_flight(&mut self, pool: &Pool) -> Result<(), Error> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        let extent = self
            .in_flight
            .swap_remove(self.rng.gen_range(0..self.in_flight.len()));
        if self.rng.gen_ratio(1, 4) {
            return pool.free_data(extent);
        }
        self.reference(pool, extent)
    }

    fn free_data(&mut self, pool: &Pool) -> Result<(), Error> {
        let Some((&key, value)) = self
            .model
            .range(Key::new(DATA_KEY_HI, self.rng.gen())..)
            .next()
        else {
            return Ok(());
        };
        let extent = data_refs(&key, value)[0];
        pool.delete(&key)?;
        self.model.remove(&key);
        pool.free_data(extent)?;
        Ok(())
    }
}
