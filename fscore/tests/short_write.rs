//! A write the kernel cuts short (here RLIMIT_FSIZE; on a full file system
//! it is ENOSPC) fails with the reason it stopped, not a bare "short I/O",
//! and what fits is written. The limit is process-wide, so this file is
//! its own test binary with one test.

use fscore::{FileStorage, Storage};

const BLOCK: usize = 4096;

#[test]
fn a_short_write_reports_why_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    FileStorage::create_sparse(&path, 64 * BLOCK as u64).unwrap();
    let mut dev = FileStorage::open(&path, true).unwrap();
    // Writes may reach 18 blocks into the file; past that the kernel cuts
    // them short (and would send SIGXFSZ, ignored here).
    // SAFETY: setting this process's signal disposition and file size limit.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: 18 * BLOCK as u64,
            rlim_max: libc::RLIM_INFINITY,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
    // One run of four blocks from block 16: two fit.
    let data: Vec<u8> = (0..4 * BLOCK).map(|i| (i / BLOCK + 1) as u8).collect();
    let blocks: Vec<(u64, &[u8])> = data
        .chunks(BLOCK)
        .enumerate()
        .map(|(i, b)| ((16 + i) as u64 * BLOCK as u64, b))
        .collect();
    let e = dev.write_batch(&blocks).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}");
    let mut fitted = vec![0u8; 2 * BLOCK];
    dev.read_at(16 * BLOCK as u64, &mut fitted).unwrap();
    assert_eq!(
        fitted,
        data[..2 * BLOCK],
        "the blocks that fit were written"
    );
    // Below the limit all is well.
    dev.write_batch(&[(0, &data[..BLOCK])]).unwrap();
}
