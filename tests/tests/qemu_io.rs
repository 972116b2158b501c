//! Proves the real `scoutfs-ublk` daemon serves qemu-io correctly over NBD:
//! patterns at odd offsets and lengths read back (`read -P`), discard and
//! write-zeroes (with and without unmap) read as zeros, and data survives
//! `del` and `add` again with `check` clean in between.

use tests::{require_tool, Pool, MIB};

#[test]
fn patterns_trim_zeroes_and_restart() {
    require_tool("qemu-io", "qemu-utils");
    let pool = Pool::mkfs("256M");
    let d = pool.add();
    assert!(
        d.printed.contains("qemu-io") && d.printed.contains("nbdinfo") && d.printed.contains("fio")
    );
    // Odd offsets and lengths (multiples of 512, crossing 4 KiB blocks).
    d.qemu_io_ok(&[
        "write -P 0x11 512 512",
        "write -P 0x22 1024 7680",
        "write -P 0x33 12800 1049088",
        "write -P 0x44 200M 3584",
        "write -P 0x55 268434944 512", // the last sector
    ]);
    d.qemu_io_ok(&[
        "read -P 0 0 512",
        "read -P 0x11 512 512",
        "read -P 0x22 1024 7680",
        "read -P 0 8704 4096",
        "read -P 0x33 12800 1049088",
        "read -P 0x44 200M 3584",
        "read -P 0x55 268434944 512",
    ]);
    // Overwrite part of a block, then discard and zero across block edges.
    d.qemu_io_ok(&[
        "write -P 0x66 1536 1024",
        "discard 16384 65536",
        "write -z 100M 1M",
        "write -z -u 101M 2M",
    ]);
    d.qemu_io_ok(&[
        "read -P 0x22 1024 512",
        "read -P 0x66 1536 1024",
        "read -P 0x22 2560 6144",
        "read -P 0x33 12800 3584",
        "read -P 0 16384 65536",
        "read -P 0x33 81920 16384",
        "read -P 0 100M 3M",
    ]);
    // A write past the end is refused and the export keeps working.
    let out = d.qemu_io(&["write -P 1 268435456 512"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("fail") || text.contains("error") || text.contains("out of range"),
        "{text}"
    );
    d.qemu_io_ok(&["read -P 0x11 512 512", "flush"]);

    pool.del(0);
    assert!(!d.socket.exists(), "del removes the socket");
    let report = pool.check_clean();
    assert!(report.contains("data blocks"), "{report}");
    let again = pool.add();
    again.qemu_io_ok(&[
        "read -P 0x11 512 512",
        "read -P 0x66 1536 1024",
        "read -P 0 16384 65536",
        "read -P 0x33 81920 16384",
        "read -P 0x44 200M 3584",
        "read -P 0x55 268434944 512",
    ]);
    let _ = MIB;
}
