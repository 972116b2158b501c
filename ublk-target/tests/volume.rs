//! Proves the volume engine against a byte-array model: reads return what
//! was written at any 512-byte offset and length, across reopen; unwritten
//! blocks cost no data I/O; a corrupted data block is EIO naming its volume
//! offset; a crash keeps flushed data and leaves unflushed blocks old or
//! new; a full pool gives ENOSPC yet stays usable; racing writers and
//! readers never lose bytes nor see false checksum errors; `check` is clean.

use futures::executor::block_on;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use ublk_target::volume::{DataIo, FileDataIo, UringDataIo, Volume, VolumeOptions, POLL_DEFAULT};
use ublk_target::{AlignedBuf, BlockTarget, TargetError};

const MIB: u64 = 1 << 20;

struct Pool {
    dir: tempfile::TempDir,
}

impl Pool {
    fn new(volume_bytes: u64, data_bytes: u64) -> Pool {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool { dir };
        let mkfs = fscore::MkfsOptions::new(16 * MIB, data_bytes);
        Volume::create(&pool.meta(), &pool.data(), volume_bytes, &mkfs).unwrap();
        pool
    }
    fn meta(&self) -> PathBuf {
        self.dir.path().join("meta")
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn open(&self) -> Arc<Volume> {
        open_at(&self.meta(), &self.data())
    }
    /// Copies both devices as they are now: what a crash would leave if
    /// every write issued so far had landed.
    fn snapshot(&self) -> Pool {
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(self.meta(), copy.path().join("meta")).unwrap();
        std::fs::copy(self.data(), copy.path().join("data")).unwrap();
        Pool { dir: copy }
    }
    /// Checks the pool clean as a crash left it (the last commit, with the
    /// journal region accounted), opens it as a restart would (applying
    /// the journal), runs `inspect` on a handle, closes it, and checks the
    /// pool clean again.
    fn recover(&self, inspect: impl FnOnce(&ublk_target::VolumeHandle<FileDataIo>)) {
        self.check_clean();
        let v = self.open();
        let c = file_handle(&v);
        inspect(&c);
        drop(c);
        v.close().unwrap();
        drop(v);
        let closed = self.check_clean();
        assert_eq!(
            closed.journal_records, 0,
            "close commits what syncs made durable"
        );
    }
    fn check_clean(&self) -> fscore::CheckReport {
        let report = Volume::check(&self.meta(), &self.data()).unwrap();
        assert!(report.is_clean(), "check found {:?}", report.problems);
        report
    }
}

/// No timer commits: tests decide when commits happen.
fn quiet() -> VolumeOptions {
    VolumeOptions {
        commit_interval_ms: 3_600_000,
        ..VolumeOptions::default()
    }
}

fn open_at(meta: &Path, data: &Path) -> Arc<Volume> {
    Volume::open(meta, data, &quiet()).unwrap()
}

fn file_handle(v: &Arc<Volume>) -> ublk_target::VolumeHandle<FileDataIo> {
    v.handle(FileDataIo::open(v.data_path()).unwrap())
}

fn read(t: &impl BlockTarget, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    block_on(t.read(offset, &mut buf)).unwrap();
    buf
}

#[test]
fn random_operations_match_a_model_across_reopen() {
    // SEED=n replays a failed run.
    let seed: u64 = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let size = 8 * MIB;
    let pool = Pool::new(size, 16 * MIB);
    let mut model = vec![0u8; size as usize];
    let mut volume = pool.open();
    let mut h = file_handle(&volume);
    for step in 0..600 {
        let sectors = size / 512;
        let offset = rng.gen_range(0..sectors) * 512;
        let len = (rng.gen_range(1..=40u64) * 512).min(size - offset);
        let (o, l) = (offset as usize, len as usize);
        match rng.gen_range(0..100) {
            0..=49 => {
                let byte: u8 = rng.gen();
                let data: Vec<u8> = (0..l).map(|i| byte.wrapping_add((i / 512) as u8)).collect();
                block_on(h.write(offset, &data, rng.gen_bool(0.1))).unwrap();
                model[o..o + l].copy_from_slice(&data);
            }
            50..=59 => {
                block_on(h.discard(offset, len)).unwrap();
                model[o..o + l].fill(0);
            }
            60..=64 => {
                block_on(h.write_zeroes(offset, len, rng.gen())).unwrap();
                model[o..o + l].fill(0);
            }
            65..=69 => block_on(h.flush()).unwrap(),
            70..=71 => {
                drop(h);
                volume.close().unwrap();
                drop(volume);
                volume = pool.open();
                h = file_handle(&volume);
            }
            _ => assert_eq!(
                read(&h, offset, l),
                &model[o..o + l],
                "seed {seed} step {step}"
            ),
        }
    }
    let all = read(&h, 0, size as usize);
    let first_bad = all.iter().zip(&model).position(|(a, b)| a != b);
    assert_eq!(
        first_bad,
        None,
        "seed {seed}: got {:?}",
        first_bad.map(|i| (all[i], model[i]))
    );
    drop(h);
    volume.close().unwrap();
    drop(volume);
    pool.check_clean();
}

/// File data I/O that runs a hook before each read and each write (on the
/// calling thread): counts reads, or holds writes.
struct HookedIo {
    inner: FileDataIo,
    before_read: Box<dyn Fn() + Send>,
    before_write: Box<dyn Fn() + Send>,
}

impl HookedIo {
    fn new(data: &Path) -> HookedIo {
        HookedIo {
            inner: FileDataIo::open(data).unwrap(),
            before_read: Box::new(|| {}),
            before_write: Box::new(|| {}),
        }
    }
}

impl DataIo for HookedIo {
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        (self.before_read)();
        self.inner.read_at(offset, buf).await
    }
    async fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        (self.before_write)();
        self.inner.write_at(offset, buf).await
    }
    async fn sync(&self) -> std::io::Result<()> {
        self.inner.sync().await
    }
}

#[test]
fn unwritten_blocks_read_as_zeros_without_data_io() {
    let pool = Pool::new(64 * MIB, 16 * MIB);
    let volume = pool.open();
    let reads = Arc::new(AtomicU64::new(0));
    let counted = reads.clone();
    let h = volume.handle(HookedIo {
        before_read: Box::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        }),
        ..HookedIo::new(&pool.data())
    });
    let io_reads = || reads.load(Ordering::Relaxed);
    assert_eq!(read(&h, 0, 4 * MIB as usize), vec![0u8; 4 * MIB as usize]);
    assert_eq!(read(&h, 63 * MIB + 512, 1536), vec![0u8; 1536]);
    assert_eq!(io_reads(), 0);
    // Two adjacent written blocks are read with one I/O; the rest costs none.
    block_on(h.write(MIB, &[7u8; 8192], false)).unwrap();
    let got = read(&h, 0, 4 * MIB as usize);
    assert_eq!(io_reads(), 1);
    assert!(got[MIB as usize..MIB as usize + 8192]
        .iter()
        .all(|&b| b == 7));
    assert_eq!(got.iter().filter(|&&b| b != 0).count(), 8192);
}

#[test]
fn a_corrupted_data_block_is_eio_naming_the_volume_offset() {
    let pool = Pool::new(64 * MIB, 16 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    let offset = 5 * MIB + 3 * 4096;
    block_on(h.write(offset, &[0x5au8; 4096], false)).unwrap();
    block_on(h.write(offset + 4096, &[0x6bu8; 4096], false)).unwrap();
    block_on(h.flush()).unwrap();
    drop(h);
    volume.close().unwrap();
    drop(volume);
    // Flip one byte of the block holding 0x5a on the data device.
    let mut data = std::fs::read(pool.data()).unwrap();
    let at = data
        .chunks(4096)
        .position(|b| b.iter().all(|&x| x == 0x5a))
        .expect("block on disk");
    data[at * 4096 + 100] ^= 1;
    std::fs::write(pool.data(), &data).unwrap();

    let volume = pool.open();
    let h = file_handle(&volume);
    // Both read paths: a bounce buffer (unaligned Vec) and straight into
    // an aligned buffer.
    let mut buf = vec![0u8; 8192];
    match block_on(h.read(offset, &mut buf)) {
        Err(TargetError::Io(msg)) => assert!(msg.contains(&offset.to_string()), "{msg}"),
        other => panic!("corrupt block read gave {other:?}"),
    }
    let mut aligned = AlignedBuf::zeroed(8192);
    assert!(matches!(
        block_on(h.read(offset, &mut aligned)),
        Err(TargetError::Io(_))
    ));
    block_on(h.read(offset + 4096, &mut aligned[..4096])).unwrap();
    assert_eq!(&aligned[..4096], &[0x6bu8; 4096][..]);
    // A 512-byte write into it cannot merge with garbage either.
    assert!(matches!(
        block_on(h.write(offset + 512, &[1u8; 512], false)),
        Err(TargetError::Io(_))
    ));
    // The neighbour is intact, and overwriting the bad block whole heals it.
    assert_eq!(read(&h, offset + 4096, 4096), vec![0x6b; 4096]);
    block_on(h.write(offset, &[0x11u8; 4096], false)).unwrap();
    assert_eq!(read(&h, offset, 4096), vec![0x11; 4096]);
}

#[test]
fn a_crash_keeps_flushed_writes_and_unflushed_blocks_are_old_or_new() {
    let pool = Pool::new(64 * MIB, 32 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    block_on(h.write(0, &vec![0xaa; 256 * 1024], false)).unwrap();
    block_on(h.flush()).unwrap();
    // Unflushed: overwrite half (copy-on-write of committed blocks), write
    // new blocks twice (the second time in place), trim some.
    block_on(h.write(0, &vec![0xbb; 128 * 1024], false)).unwrap();
    block_on(h.write(MIB, &vec![0xcc; 64 * 1024], false)).unwrap();
    block_on(h.write(MIB, &vec![0xdd; 64 * 1024], false)).unwrap();
    block_on(h.discard(192 * 1024, 64 * 1024)).unwrap();
    let crash_before_flush = pool.snapshot();
    block_on(h.write(2 * MIB + 512, &[0xee; 1024], true)).unwrap(); // FUA
    let crash_after_fua = pool.snapshot();

    // Before the flush: exactly the last committed contents.
    crash_before_flush.recover(|c| {
        assert_eq!(read(c, 0, 256 * 1024), vec![0xaa; 256 * 1024]);
        assert_eq!(read(c, MIB, 64 * 1024), vec![0u8; 64 * 1024]);
    });

    // After the FUA write: it and everything before it survived.
    crash_after_fua.recover(|c| {
        let mut expect = vec![0xaa; 256 * 1024];
        expect[..128 * 1024].fill(0xbb);
        expect[192 * 1024..].fill(0);
        assert_eq!(read(c, 0, 256 * 1024), expect);
        assert_eq!(read(c, MIB, 64 * 1024), vec![0xdd; 64 * 1024]);
        let mut fua = vec![0u8; 2048];
        fua[512..1536].fill(0xee);
        assert_eq!(read(c, 2 * MIB, 2048), fua);
    });
}

/// A flush does not wait for a copy-on-write write whose data is still on
/// its way (it is not acknowledged, so the flush need not cover it): the
/// commit carries the write's new block, so a crash right after it finds
/// the block free and the old data in place, and checks clean; once the
/// write lands, the next flush makes it durable.
#[test]
fn a_flush_does_not_wait_for_a_copy_on_write_write_in_flight() {
    use std::sync::mpsc;
    use std::time::Duration;
    let pool = Pool::new(64 * MIB, 32 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    block_on(h.write(0, &vec![0xaa; 8192], false)).unwrap();
    block_on(h.flush()).unwrap();

    let (started, write_started) = mpsc::channel();
    let (release, released) = mpsc::channel();
    let released = std::sync::Mutex::new(released);
    // The writer's data write waits, on its thread, until released.
    let held = HookedIo {
        before_write: Box::new(move || {
            let _ = started.send(());
            let _ = released.lock().unwrap().recv();
        }),
        ..HookedIo::new(volume.data_path())
    };
    let writer = {
        let volume = volume.clone();
        std::thread::spawn(move || block_on(volume.handle(held).write(0, &[0xbb; 4096], false)))
    };
    write_started.recv_timeout(Duration::from_secs(10)).unwrap();
    block_on(h.write(MIB, &vec![0xcc; 4096], false)).unwrap();
    let (flushed, flush_done) = mpsc::channel();
    let flusher = {
        let volume = volume.clone();
        std::thread::spawn(move || {
            let _ = flushed.send(block_on(file_handle(&volume).flush()));
        })
    };
    let flush = flush_done.recv_timeout(Duration::from_secs(10));
    let crash_while_in_flight = pool.snapshot();
    release.send(()).unwrap();
    writer.join().unwrap().unwrap();
    flusher.join().unwrap();
    let flush = flush.expect("the flush waited for the write in flight");
    flush.unwrap();
    block_on(h.flush()).unwrap();
    let crash_after_landing = pool.snapshot();
    drop(h);
    volume.close().unwrap();
    drop(volume);

    crash_while_in_flight.recover(|c| {
        assert_eq!(read(c, 0, 8192), vec![0xaa; 8192]);
        assert_eq!(read(c, MIB, 4096), vec![0xcc; 4096]);
    });

    crash_after_landing.recover(|c| {
        let mut expect = vec![0xaa; 8192];
        expect[..4096].fill(0xbb);
        assert_eq!(read(c, 0, 8192), expect);
    });
}

/// A flush with nothing changed since the last sync is answered without
/// one; any change (a write, a discard) makes the next flush sync it to the
/// journal (no commit: the superblock's seq stays), and a crash after it
/// keeps the change (the journal is applied again at open). A handle's
/// first sync is a commit (it gives the journal its region).
#[test]
fn a_flush_syncs_only_what_changed_since_the_last_sync() {
    let pool = Pool::new(64 * MIB, 32 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    // (superblock seq, journal blocks written): moves at each sync.
    let point = || {
        let info = volume.pool_info();
        (info.seq, info.journal_used_blocks)
    };
    let start = point();
    block_on(h.flush()).unwrap();
    assert_eq!(point(), start, "nothing to sync");
    block_on(h.write(0, &[0x10; 4096], false)).unwrap();
    block_on(h.flush()).unwrap();
    let first = point();
    assert!(first.0 > start.0, "the first sync of a handle is a commit");
    assert!(
        volume.pool_info().journal_blocks > 0,
        "which gives a journal"
    );
    block_on(h.write(4096, &[0x11; 4096], false)).unwrap();
    block_on(h.flush()).unwrap();
    let after_write = point();
    assert_eq!(after_write.0, first.0, "a sync, not a commit");
    assert!(after_write.1 > first.1, "the write was synced");
    block_on(h.flush()).unwrap();
    block_on(h.flush()).unwrap();
    assert_eq!(point(), after_write, "flushes with no change sync nothing");
    block_on(h.discard(4096, 4096)).unwrap();
    block_on(h.write(8192, &[0x22; 4096], false)).unwrap();
    block_on(h.flush()).unwrap();
    assert_eq!(point().0, first.0, "still no commit");
    assert!(
        point().1 > after_write.1,
        "the discard and write were synced"
    );
    let crash = pool.snapshot();
    drop(h);
    volume.close().unwrap();
    drop(volume);
    // Nothing changed since the last flush, yet close commits what the
    // syncs made durable: no journal left to apply.
    let closed = pool.check_clean();
    assert!(closed.seq > first.0);
    assert_eq!(
        closed.journal_records, 0,
        "close commits the synced changes"
    );

    crash.recover(|c| {
        assert_eq!(read(c, 0, 4096), vec![0x10; 4096]);
        assert_eq!(read(c, 4096, 4096), vec![0u8; 4096]);
        assert_eq!(read(c, 8192, 4096), vec![0x22; 4096]);
    });
}

/// A sync's journal block and the data its records point at reach the
/// device in any order before its flush: a crash can leave the block
/// without the data. Open then drops that whole sync (never acknowledged)
/// instead of mapping blocks whose checksum fails; earlier syncs stay.
#[test]
fn a_last_sync_whose_data_did_not_land_is_dropped_whole() {
    let pool = Pool::new(64 * MIB, 32 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    block_on(h.write(0, &[0xa1; 4096], false)).unwrap();
    block_on(h.flush()).unwrap(); // the handle's first: a commit
    block_on(h.write(4096, &[0xb2; 4096], false)).unwrap();
    block_on(h.flush()).unwrap(); // sync 1
    block_on(h.write(8192, &[0xc3; 4096], false)).unwrap();
    block_on(h.write(4096, &[0xd4; 4096], false)).unwrap();
    block_on(h.flush()).unwrap(); // sync 2
    assert_eq!(volume.pool_info().seq, 3, "syncs 1 and 2 were not commits");
    let whole = pool.snapshot();
    let torn = pool.snapshot();
    drop(h);
    volume.close().unwrap();
    drop(volume);

    // Both syncs intact: everything is there.
    whole.recover(|c| {
        assert!(read(c, 0, 4096) == [0xa1; 4096], "block at 0");
        assert!(read(c, 4096, 4096) == [0xd4; 4096], "block at 4096");
        assert!(read(c, 8192, 4096) == [0xc3; 4096], "block at 8192");
    });
    // Sync 2's data block for 0xc3 never landed (zeros where it was).
    let data = std::fs::read(torn.data()).unwrap();
    let at = data
        .chunks(4096)
        .position(|block| block == [0xc3; 4096])
        .expect("the data block of sync 2");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(torn.data())
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[0; 4096], at as u64 * 4096).unwrap();
    torn.recover(|c| {
        assert!(read(c, 0, 4096) == [0xa1; 4096], "block at 0");
        assert!(
            read(c, 4096, 4096) == [0xb2; 4096],
            "sync 1 stays, sync 2 is dropped"
        );
        assert!(read(c, 8192, 4096) == [0u8; 4096], "block at 8192");
    });
}

/// Writes that are never flushed still log a record each: when the records
/// waiting for a sync no longer fit the journal's room, the volume commits
/// on its own (bounding their memory), and what it committed survives a
/// crash without any flush.
#[test]
fn unflushed_records_that_outgrow_the_journal_are_committed() {
    // 4 MiB of data: a journal region of 64 blocks, ~7,800 records.
    let pool = Pool::new(16 * MIB, 4 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    block_on(h.write(0, &[1; 4096], false)).unwrap();
    block_on(h.flush()).unwrap(); // the handle's first: a commit, a region
    let region = volume.pool_info().journal_blocks;
    assert!(region > 0);
    let seq = volume.pool_info().seq;
    let mut last = [0u8; 64];
    let mut round = 0u8;
    while volume.pool_info().seq == seq {
        round = round.wrapping_add(1);
        assert!(
            round < 200,
            "no commit after {round} rounds of unflushed writes"
        );
        for (block, value) in last.iter_mut().enumerate() {
            *value = round;
            block_on(h.write(block as u64 * 4096, &[round; 4096], false)).unwrap();
        }
        // The commit thread runs on its own: give it a moment per round.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // The commit covered the blocks as they were when it began, after
    // dozens of rounds: a crash now (no flush since the first) finds each
    // block with a value of a later round, whole.
    let crash = pool.snapshot();
    drop(h);
    volume.close().unwrap();
    drop(volume);
    crash.recover(|c| {
        for block in 0..64u64 {
            let got = read(c, block * 4096, 4096);
            assert!(got.iter().all(|b| *b == got[0]), "block {block} is whole");
            assert!(
                got[0] > 1 && got[0] <= last[block as usize],
                "block {block}: {}",
                got[0]
            );
        }
    });
}

/// A 4 KiB block of `byte` in an aligned buffer, as front ends pass whole
/// blocks (written without a bounce copy).
fn block_of(byte: u8) -> AlignedBuf {
    let mut block = AlignedBuf::zeroed(4096);
    block.fill(byte);
    block
}

/// A block mapped again before the next sync is overwritten in place (no
/// allocation); one that a sync made durable is copied, so a crash after
/// an unflushed overwrite keeps what the sync acknowledged (an in-place
/// overwrite would leave the journal's checksum over other data: the last
/// sync would be dropped, or the block EIO).
#[test]
fn only_blocks_mapped_since_the_last_sync_are_overwritten_in_place() {
    let pool = Pool::new(64 * MIB, 32 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    block_on(h.write(0, &block_of(1), false)).unwrap();
    block_on(h.flush()).unwrap(); // the handle's first: a commit
    block_on(h.write(4096, &block_of(2), false)).unwrap();
    block_on(h.write(8192, &block_of(3), false)).unwrap();
    // Mapped in this generation: overwritten in place, nothing allocated.
    let free = volume.pool_info().data_free_blocks;
    block_on(h.write(8192, &block_of(3), false)).unwrap();
    assert_eq!(volume.pool_info().data_free_blocks, free, "in place");
    block_on(h.flush()).unwrap(); // a sync
                                  // Synced: copied, so the synced data stays where the journal says.
    block_on(h.write(4096, &block_of(4), false)).unwrap();
    assert_eq!(
        volume.pool_info().data_free_blocks,
        free - 1,
        "copy-on-write"
    );
    let crash = pool.snapshot();
    drop(h);
    volume.close().unwrap();
    drop(volume);
    crash.recover(|c| {
        assert!(read(c, 0, 4096) == [1; 4096]);
        let overwritten = read(c, 4096, 4096);
        assert!(overwritten == [2; 4096] || overwritten == [4; 4096]);
        assert!(read(c, 8192, 4096) == [3; 4096], "the sync's other block");
    });
}

/// Whole and partial writes agree on what is written in place (a block
/// mapped in the open generation by either), a block discarded or unmapped
/// by write-zeroes is never written in place again (its old data block is
/// busy), and a commit ends in-place writes like a sync does. `check` and
/// the data prove nothing was overwritten wrongly.
#[test]
fn whole_and_partial_writes_agree_on_in_place_and_discard_ends_it() {
    let pool = Pool::new(64 * MIB, 32 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    let free = || volume.pool_info().data_free_blocks;
    // A write and a commit (the handle's first flush) first: the first
    // change asks for a commit in the background, which gives the journal
    // its region (data blocks too); once the flush returns the counts
    // below see only the writes' own blocks.
    block_on(h.write(40960, &block_of(1), false)).unwrap();
    block_on(h.flush()).unwrap();
    block_on(h.write(0, &block_of(1), false)).unwrap();
    let before = free();
    // Partial write of a block the whole write mapped: looked up, in place.
    block_on(h.write(512, &[2u8; 1024], false)).unwrap();
    assert_eq!(free(), before, "partial write in place");
    // Whole write of a block a partial write mapped: known, in place.
    block_on(h.write(16384 + 512, &[3u8; 512], false)).unwrap();
    let before = free();
    block_on(h.write(16384, &block_of(4), false)).unwrap();
    assert_eq!(free(), before, "whole write in place");
    // Discarded, then written whole: a new block, not the busy old one.
    block_on(h.discard(0, 4096)).unwrap();
    let before = free();
    block_on(h.write(0, &block_of(5), false)).unwrap();
    assert_eq!(free(), before - 1, "rewrite after discard allocates");
    // Write-zeroes that unmaps ends it too.
    block_on(h.write_zeroes(16384, 4096, true)).unwrap();
    let before = free();
    block_on(h.write(16384, &block_of(6), false)).unwrap();
    assert_eq!(
        free(),
        before - 1,
        "rewrite after unmapping zeroes allocates"
    );
    // A flush (a sync now) ends the open generation.
    block_on(h.flush()).unwrap();
    let before = free();
    block_on(h.write(0, &block_of(7), false)).unwrap();
    assert_eq!(free(), before - 1, "copy-on-write after the commit");
    assert!(read(&h, 0, 4096) == [7; 4096]);
    assert!(read(&h, 16384, 4096) == [6; 4096]);
    drop(h);
    volume.close().unwrap();
    drop(volume);
    let report = pool.check_clean();
    assert_eq!(report.data_blocks_referenced, 3);
}

#[test]
fn a_full_pool_gives_enospc_and_stays_usable() {
    // 4 MiB of data blocks for a 16 MiB volume; 1 MiB of it is the reserve.
    let pool = Pool::new(16 * MIB, 4 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    let mut written = 0u64;
    loop {
        match block_on(h.write(written, &[0x33; 4096], false)) {
            Ok(()) => written += 4096,
            Err(TargetError::NoSpace) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // The journal region (a sixteenth of this small device) is data space
    // too; the label block is not.
    let journal_bytes = volume.pool_info().journal_blocks * 4096;
    assert!(journal_bytes > 0);
    assert_eq!(
        written + journal_bytes,
        3 * MIB - fscore::FIRST_DATA_BLOCK * 4096
    );
    block_on(h.flush()).unwrap();
    assert_eq!(read(&h, 0, written as usize), vec![0x33; written as usize]);
    assert_eq!(
        block_on(h.write(written, &[1; 512], false)),
        Err(TargetError::NoSpace)
    );
    // Overwrites of written blocks still work, large and small, unflushed.
    block_on(h.write(0, &vec![0x44; 2 * MIB as usize], false)).unwrap();
    block_on(h.write(2 * MIB + 512, &[0x55; 512], false)).unwrap();
    assert_eq!(read(&h, 0, 2 * MIB as usize), vec![0x44; 2 * MIB as usize]);
    // Discard gives space back to new writes.
    block_on(h.discard(0, MIB)).unwrap();
    block_on(h.write(written, &vec![0x66; MIB as usize], false)).unwrap();
    assert_eq!(read(&h, 0, 4096), vec![0; 4096]);
    assert_eq!(read(&h, written, 4096), vec![0x66; 4096]);
    drop(h);
    volume.close().unwrap();
    drop(volume);
    let report = pool.check_clean();
    assert_eq!(report.data_blocks_referenced, written / 4096);
}

#[test]
fn discard_and_write_zeroes_free_or_keep_space() {
    let pool = Pool::new(16 * MIB, 16 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    block_on(h.write(0, &vec![9u8; 2 * MIB as usize], false)).unwrap();
    block_on(h.discard(512, MIB)).unwrap(); // partial blocks at both ends
    block_on(h.write_zeroes(MIB + 4096, 64 * 1024, false)).unwrap(); // stays allocated
    block_on(h.write_zeroes(MIB + 128 * 1024, 64 * 1024, true)).unwrap(); // unmapped
    block_on(h.write_zeroes(8 * MIB, 64 * 1024, false)).unwrap(); // allocates zeros
    let got = read(&h, 0, 2 * MIB as usize);
    let mut expect = vec![9u8; 2 * MIB as usize];
    expect[512..MIB as usize + 512].fill(0);
    expect[(MIB + 4096) as usize..(MIB + 68 * 1024) as usize].fill(0);
    expect[(MIB + 128 * 1024) as usize..(MIB + 192 * 1024) as usize].fill(0);
    assert_eq!(got, expect);
    drop(h);
    volume.close().unwrap();
    drop(volume);
    let report = pool.check_clean();
    // 512 blocks written; the discard freed 255 whole blocks (not the edges);
    // the unmapping write-zeroes 16 more; the non-unmapping one added 16.
    assert_eq!(report.data_blocks_referenced, 512 - 255 - 16 + 16);
}

#[test]
fn racing_writers_and_readers_lose_nothing_and_see_no_false_errors() {
    let pool = std::rc::Rc::new(Pool::new(16 * MIB, 16 * MIB));
    let volume = pool.open();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let h =
            std::rc::Rc::new(volume.handle(UringDataIo::open(&pool.data(), POLL_DEFAULT).unwrap()));
        // Eight 512-byte writes into one block at once: all eight land.
        let writes = (0..8u64).map(|i| {
            let h = h.clone();
            async move { h.write(i * 512, &[i as u8 + 1; 512], false).await.unwrap() }
        });
        futures::future::join_all(writes).await;
        let mut block = AlignedBuf::zeroed(4096);
        h.read(0, &mut block).await.unwrap();
        for i in 0..8 {
            assert!(block[i * 512..(i + 1) * 512]
                .iter()
                .all(|&b| b == i as u8 + 1));
        }
        // Whole-block rewrites (in place and copy-on-write, with commits in
        // between) while readers check every block is uniformly old or new;
        // writer 0 copies the devices after each of its flushes, while the
        // others' writes and commits go on (crash images, checked below).
        let mut tasks = Vec::new();
        let snapshots = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        for w in 0..4u64 {
            let h = h.clone();
            let pool = pool.clone();
            let snapshots = snapshots.clone();
            tasks.push(tokio::task::spawn_local(async move {
                for round in 0..40u64 {
                    let byte = (w * 40 + round) as u8;
                    h.write(w * 16 * 4096, &vec![byte; 16 * 4096], false)
                        .await
                        .unwrap();
                    if round % 10 == 0 {
                        h.flush().await.unwrap();
                        if w == 0 {
                            snapshots.borrow_mut().push(pool.snapshot());
                        }
                    }
                }
            }));
        }
        for _ in 0..4 {
            let h = h.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut buf = AlignedBuf::zeroed(64 * 4096);
                for _ in 0..60 {
                    h.read(0, &mut buf).await.expect("no false checksum error");
                    for b in buf.chunks(4096).skip(1) {
                        assert!(b.iter().all(|&x| x == b[0]), "a torn block");
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for crash in snapshots.borrow().iter() {
            crash.recover(|c| {
                let all = read(c, 0, 64 * 4096);
                for b in all.chunks(4096).skip(1) {
                    assert!(b.iter().all(|&x| x == b[0]), "a torn block after a crash");
                }
            });
        }
    });
    volume.close().unwrap();
    drop(volume);
    pool.check_clean();
}

/// Copy-on-write writes to scattered blocks with flushes and crash images
/// taken while they are in flight: every image reopens, checks clean (a
/// block allocated by a write still in flight at a commit is free in it,
/// never leaked) and holds only whole blocks.
#[test]
fn crash_images_taken_during_concurrent_copy_on_write_check_clean() {
    const BLOCKS: u64 = 1024;
    let pool = std::rc::Rc::new(Pool::new(BLOCKS * 4096, 8 * MIB));
    let volume = pool.open();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let snapshots = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    tokio::task::LocalSet::new().block_on(&rt, async {
        let h =
            std::rc::Rc::new(volume.handle(UringDataIo::open(&pool.data(), POLL_DEFAULT).unwrap()));
        let mut tasks = Vec::new();
        for w in 0..8u64 {
            let h = h.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(w);
                for round in 0..150u64 {
                    let block = rng.gen_range(0..BLOCKS);
                    let tag = (w * 150 + round) as u8 | 1;
                    h.write(block * 4096, &[tag; 4096], false).await.unwrap();
                }
            }));
        }
        let flusher = {
            let (h, pool, snapshots) = (h.clone(), pool.clone(), snapshots.clone());
            tokio::task::spawn_local(async move {
                for _ in 0..12 {
                    h.flush().await.unwrap();
                    // Other writers' data I/O is in flight now, and the
                    // commit thread may be writing the next commit.
                    snapshots.borrow_mut().push(pool.snapshot());
                    tokio::task::yield_now().await;
                }
            })
        };
        for t in tasks {
            t.await.unwrap();
        }
        flusher.await.unwrap();
    });
    volume.close().unwrap();
    drop(volume);
    pool.check_clean();
    for crash in snapshots.borrow().iter() {
        crash.recover(|c| {
            let all = read(c, 0, (BLOCKS * 4096) as usize);
            for b in all.chunks(4096) {
                assert!(b.iter().all(|&x| x == b[0]), "a torn block after a crash");
            }
        });
    }
}

#[test]
fn requests_out_of_range_or_misaligned_are_einval() {
    let pool = Pool::new(MIB, 4 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    let mut buf = vec![0u8; 512];
    assert!(matches!(
        block_on(h.read(MIB, &mut buf)),
        Err(TargetError::Invalid(_))
    ));
    assert!(matches!(
        block_on(h.read(100, &mut buf)),
        Err(TargetError::Invalid(_))
    ));
    assert!(matches!(
        block_on(h.write(MIB - 512, &[0; 1024], false)),
        Err(TargetError::Invalid(_))
    ));
    assert!(matches!(
        block_on(h.discard(u64::MAX - 511, 1024)),
        Err(TargetError::Invalid(_))
    ));
    assert!(matches!(
        block_on(h.write_zeroes(0, 100, false)),
        Err(TargetError::Invalid(_))
    ));
    assert!(
        Volume::open(&pool.meta(), &pool.data(), &quiet()).is_err(),
        "pool is locked"
    );
}

fn aligned_copy(data: &[u8]) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed(data.len());
    buf.copy_from_slice(data);
    buf
}

/// Runs `write_answering` on its own thread; returns the answer's receiver
/// and the thread (which ends when the write is done).
fn write_answering_on_thread<D: DataIo + Send + 'static>(
    volume: &Arc<Volume>,
    io: D,
    offset: u64,
    data: Vec<u8>,
) -> (
    futures::channel::oneshot::Receiver<Result<(), TargetError>>,
    std::thread::JoinHandle<()>,
) {
    let (answer, answered) = futures::channel::oneshot::channel();
    let volume = volume.clone();
    let thread = std::thread::spawn(move || {
        let data = aligned_copy(&data);
        block_on(volume.handle(io).write_answering(offset, &data, answer));
    });
    (answered, thread)
}

/// `write_answering_on_thread` whose data write waits until `release` is
/// sent (or dropped): returns it, the answer's receiver and the thread.
fn held_answered_write(
    volume: &Arc<Volume>,
    offset: u64,
    data: Vec<u8>,
) -> (
    std::sync::mpsc::Sender<()>,
    futures::channel::oneshot::Receiver<Result<(), TargetError>>,
    std::thread::JoinHandle<()>,
) {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let held = HookedIo {
        before_write: Box::new(move || {
            let _ = released.lock().unwrap().recv();
        }),
        ..HookedIo::new(volume.data_path())
    };
    let (answered, writer) = write_answering_on_thread(volume, held, offset, data);
    (release, answered, writer)
}

/// A write answered before its data landed: a read issued after the answer
/// waits for it and returns the new data, a flush issued after the answer
/// waits for it and makes it durable; a crash before it landed leaves the
/// old data.
#[test]
fn an_answered_write_is_seen_by_later_reads_and_flushes_before_it_lands() {
    use std::sync::mpsc;
    use std::time::Duration;
    let pool = Pool::new(64 * MIB, 32 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    block_on(h.write(0, &vec![0xaa; 8192], false)).unwrap();
    block_on(h.flush()).unwrap();

    let (release, answered, writer) = held_answered_write(&volume, 0, vec![0xbb; 4096]);
    // Answered while its data write is held.
    assert_eq!(block_on(answered), Ok(Ok(())));

    let (read_tx, read_rx) = mpsc::channel();
    let reader = {
        let volume = volume.clone();
        std::thread::spawn(move || {
            let _ = read_tx.send(read(&file_handle(&volume), 0, 8192));
        })
    };
    let (flush_tx, flush_rx) = mpsc::channel();
    let flusher = {
        let volume = volume.clone();
        std::thread::spawn(move || {
            let _ = flush_tx.send(block_on(file_handle(&volume).flush()));
        })
    };
    assert!(
        read_rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a read after the answer returned before the write landed"
    );
    assert!(
        flush_rx.try_recv().is_err(),
        "a flush after the answer finished before the write landed"
    );
    let crash_before_landing = pool.snapshot();
    release.send(()).unwrap();
    writer.join().unwrap();
    let mut expect = vec![0xaa; 8192];
    expect[..4096].fill(0xbb);
    assert_eq!(
        read_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        expect
    );
    flush_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    reader.join().unwrap();
    flusher.join().unwrap();
    let crash_after_flush = pool.snapshot();
    drop(h);
    volume.close().unwrap();
    drop(volume);

    crash_before_landing.recover(|c| assert_eq!(read(c, 0, 8192), vec![0xaa; 8192]));
    crash_after_flush.recover(|c| assert_eq!(read(c, 0, 8192), expect));
}

/// An allocation query (NBD BLOCK_STATUS) after a write was answered but
/// before its data landed waits for it and reports the block as data, not
/// the hole it was (a copy that trusted the hole would skip the data); a
/// lock taken after the query began is not waited for.
#[test]
fn an_answered_write_into_a_hole_is_data_to_a_later_allocation_query() {
    use std::sync::mpsc;
    use std::time::Duration;
    use ublk_target::target::Allocation;
    let pool = Pool::new(64 * MIB, 32 * MIB);
    let volume = pool.open();
    let (release, answered, writer) = held_answered_write(&volume, 8192, vec![0xbb; 4096]);
    assert_eq!(block_on(answered), Ok(Ok(())));
    let (tx, rx) = mpsc::channel();
    let querier = {
        let volume = volume.clone();
        std::thread::spawn(move || {
            let _ = tx.send(block_on(file_handle(&volume).allocation(0, 64 * 1024)));
        })
    };
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the query answered before the answered write was mapped"
    );
    release.send(()).unwrap();
    writer.join().unwrap();
    let runs = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    let run = |bytes, hole| Allocation { bytes, hole };
    assert_eq!(
        runs,
        vec![
            run(8192, true),
            run(4096, false),
            run(64 * 1024 - 12288, true)
        ]
    );
    querier.join().unwrap();
    volume.close().unwrap();
}

/// Data writes fail with errno `.1`.
struct FailingWrites(FileDataIo, i32);

impl FailingWrites {
    fn on(volume: &Arc<Volume>, errno: i32) -> FailingWrites {
        FailingWrites(FileDataIo::open(volume.data_path()).unwrap(), errno)
    }
}

impl DataIo for FailingWrites {
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf).await
    }
    async fn write_at(&self, _offset: u64, _buf: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::from_raw_os_error(self.1))
    }
    async fn sync(&self) -> std::io::Result<()> {
        self.0.sync().await
    }
}

/// A data device whose own file system is full (a sparse pool on a full
/// host file system) fails the write with ENOSPC, not EIO: the client
/// learns what a thin device out of space tells it. The block keeps its
/// old data, nothing leaks, and writes go on once there is room.
#[test]
fn a_data_write_out_of_host_space_is_enospc() {
    let pool = Pool::new(64 * MIB, 32 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    block_on(h.write(0, &vec![0xaa; 4096], false)).unwrap();
    let full = volume.handle(FailingWrites::on(&volume, libc::ENOSPC));
    for offset in [0, 8192] {
        assert_eq!(
            block_on(full.write(offset, &vec![0xbb; 4096], false)),
            Err(TargetError::NoSpace)
        );
    }
    let broken = volume.handle(FailingWrites::on(&volume, libc::EIO));
    assert!(matches!(
        block_on(broken.write(0, &vec![0xbb; 4096], false)),
        Err(TargetError::Io(_))
    ));
    block_on(h.flush()).unwrap();
    assert_eq!(
        read(&h, 0, 8192),
        [vec![0xaa; 4096], vec![0; 4096]].concat()
    );
    block_on(h.write(8192, &vec![0xcc; 4096], false)).unwrap();
    block_on(h.flush()).unwrap();
    drop((h, full, broken));
    volume.close().unwrap();
    drop(volume);
    assert_eq!(pool.check_clean().data_blocks_referenced, 2);
}

/// A data write that fails after its answer, copy-on-write or in place:
/// the next flush reports it (once), the block keeps its old data, and no
/// space leaks.
#[test]
fn a_write_failing_after_its_answer_fails_the_next_flush() {
    let pool = Pool::new(64 * MIB, 32 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    block_on(h.write(0, &vec![0xaa; 4096], false)).unwrap();
    block_on(h.flush()).unwrap();
    let failing = FailingWrites::on(&volume, libc::EIO);
    let (answered, writer) = write_answering_on_thread(&volume, failing, 0, vec![0xbb; 4096]);
    assert_eq!(block_on(answered), Ok(Ok(())));
    writer.join().unwrap();
    match block_on(h.flush()) {
        Err(TargetError::Io(_)) => {}
        other => panic!("the flush after a failed answered write gave {other:?}"),
    }
    block_on(h.flush()).unwrap();
    assert_eq!(read(&h, 0, 4096), vec![0xaa; 4096]);
    // A block written since the last flush is overwritten in place (the
    // write holds a gate pass across its data write): the same, and the
    // pass is let go (the flush ends).
    block_on(h.write(8192, &vec![0xcc; 4096], false)).unwrap();
    let failing = FailingWrites::on(&volume, libc::EIO);
    let (answered, writer) = write_answering_on_thread(&volume, failing, 8192, vec![0xdd; 4096]);
    assert_eq!(block_on(answered), Ok(Ok(())));
    writer.join().unwrap();
    assert!(matches!(block_on(h.flush()), Err(TargetError::Io(_))));
    assert_eq!(read(&h, 8192, 4096), vec![0xcc; 4096]);
    drop(h);
    volume.close().unwrap();
    drop(volume);
    let report = pool.check_clean();
    assert_eq!(report.data_blocks_referenced, 2);
}

/// ENOSPC, EINVAL and multi-chunk writes are answered with the write's
/// real result, never early.
#[test]
fn writes_that_fail_before_acceptance_are_answered_with_the_error() {
    let pool = Pool::new(16 * MIB, 4 * MIB);
    let volume = pool.open();
    let h = file_handle(&volume);
    let answer = |offset: u64, len: usize| {
        let (answer, answered) = futures::channel::oneshot::channel();
        let data = aligned_copy(&vec![0x33; len]);
        block_on(h.write_answering(offset, &data, answer));
        block_on(answered).unwrap()
    };
    assert!(matches!(
        answer(16 * MIB, 4096),
        Err(TargetError::Invalid(_))
    ));
    assert!(matches!(answer(100, 4096), Err(TargetError::Invalid(_))));
    let mut written = 0u64;
    loop {
        match answer(written, 4096) {
            Ok(()) => written += 4096,
            Err(TargetError::NoSpace) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(written > 0);
    // Two chunks, the second past the end of the space.
    assert_eq!(
        answer(written - MIB, 2 * MIB as usize),
        Err(TargetError::NoSpace)
    );
    // Overwrites of written blocks still work and read back.
    assert_eq!(answer(0, 8192), Ok(()));
    block_on(h.flush()).unwrap();
    assert_eq!(read(&h, 0, 8192), vec![0x33; 8192]);
    drop(h);
    volume.close().unwrap();
    drop(volume);
    pool.check_clean();
}
