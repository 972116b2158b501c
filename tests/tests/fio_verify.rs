//! Proves fio's nbd engine can write at queue depth 32 (4 KiB, and 512 B to
//! 64 KiB at odd alignments) and read every block back with a matching
//! crc32c (ci/fio/verify.fio), also while writing goes on (a read right
//! after its write's answer), and that `check` is clean afterwards.

use std::process::Command;
use tests::{require_tool, run_ok, Pool};

#[test]
fn fio_randwrite_verify_crc32c_qd32() {
    require_tool("fio", "fio");
    let pool = Pool::mkfs("256M");
    let d = pool.add();
    let job = concat!(env!("CARGO_MANIFEST_DIR"), "/../ci/fio/verify.fio");
    let out = run_ok(
        Command::new("fio")
            .arg(job)
            // fio writes its verify state files into the working directory.
            .current_dir(pool.dir.path())
            .env("NBD_URI", &d.uri)
            .env("SIZE", "64M"),
    );
    assert!(
        out.contains("randwrite-4k")
            && out.contains("randwrite-512-to-64k")
            && out.contains("randwrite-verify-backlog"),
        "{out}"
    );
    assert!(!out.contains("verify: bad"), "{out}");
    pool.del(0);
    pool.check_clean();
}
