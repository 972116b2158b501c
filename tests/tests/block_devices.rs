//! A pool on block devices (loop devices over files; root only): `mkfs`
//! takes the volume size from the data device and refuses a `--size` it
//! cannot hold, the daemon serves it, every flushed write and discard
//! survives `del` and `add` again, and `check` is clean.

use std::path::{Path, PathBuf};
use std::process::Command;
use tests::{require_root, require_tool, run, run_ok, Pool, MIB};

/// A loop device over a file, detached when dropped.
struct LoopDevice {
    dev: PathBuf,
}

impl LoopDevice {
    fn attach(file: &Path, bytes: u64) -> LoopDevice {
        std::fs::File::create(file).unwrap().set_len(bytes).unwrap();
        let dev = run_ok(Command::new("losetup").args(["--find", "--show"]).arg(file));
        LoopDevice {
            dev: PathBuf::from(dev.trim()),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn a_pool_on_block_devices() {
    require_root("attaches loop devices");
    require_tool("losetup", "mount");
    require_tool("qemu-io", "qemu-utils");
    let pool = Pool::empty();
    let meta = LoopDevice::attach(&pool.dir.path().join("meta.img"), 64 * MIB);
    let data = LoopDevice::attach(&pool.dir.path().join("data.img"), 300 * MIB);
    // Declared after the loop devices: dropped (its daemons stopped) first.
    let pool = pool.with_devices(meta.dev.clone(), data.dev.clone());
    let mkfs = |size: Option<&str>| {
        let mut c = pool.cmd();
        c.arg("mkfs");
        if let Some(size) = size {
            c.args(["--size", size]);
        }
        run(pool.pool_args(&mut c))
    };

    let refused = mkfs(Some("1G"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("too small for --size"),
        "{stderr}"
    );
    // No size: the data device's, less a fifth of it for copy-on-write slack.
    let made = mkfs(None);
    let stdout = String::from_utf8_lossy(&made.stdout);
    assert!(made.status.success(), "{made:?}");
    assert!(stdout.contains("volume of 240.0 MiB"), "{stdout}");

    let daemon = pool.add();
    assert_eq!(pool.entry(0)["data"].as_str(), data.dev.to_str());
    daemon.qemu_io_ok(&[
        "write -P 0x5a 1000 300k",
        "write -P 0xa5 200M 1M",
        "write -P 0x3c 100M 64k",
        "discard 100M 64k",
        "flush",
    ]);
    pool.del(0);
    pool.check_clean();

    let daemon = pool.add();
    daemon.qemu_io_ok(&[
        "read -P 0 0 1000",
        "read -P 0x5a 1000 300k",
        "read -P 0 100M 64k",
        "read -P 0xa5 200M 1M",
        "read -P 0 239M 1M",
    ]);
    // Past the end of the volume: refused.
    let past = daemon.qemu_io(&["read 240M 4k"]);
    let stdout = String::from_utf8_lossy(&past.stdout);
    assert!(
        !past.status.success() && stdout.contains("read failed"),
        "{stdout}"
    );
    pool.del(0);
    pool.check_clean();
}
