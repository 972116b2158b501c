//! A pool on block devices (loop devices over files; root only): `mkfs`
//! takes the volume size from the data device and refuses a `--size` it
//! cannot hold, the daemon serves it, every flushed write and discard
//! survives `del` and `add` again, and `check` is clean.

use std::path::{Path, PathBuf};
use std::process::Command;
use tests::{binary, require_tool, run, run_ok, Daemon, Pool, MIB};

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

fn add(pool: &Pool, meta: &Path, data: &Path) -> Daemon {
    let socket = pool.dir.path().join("nbd.sock");
    let printed = run_ok(
        pool.cmd()
            .args(["add", "--nbd"])
            .arg(format!("unix:{}", socket.display()))
            .arg("--meta")
            .arg(meta)
            .arg("--data")
            .arg(data),
    );
    let entry = pool.entry(0);
    assert_eq!(entry["data"].as_str(), data.to_str(), "{entry}");
    Daemon {
        pid: entry["pid"].as_u64().unwrap() as i32,
        uri: entry["uri"].as_str().unwrap().to_string(),
        socket,
        printed,
    }
}

fn check_clean(pool: &Pool, meta: &Path, data: &Path) {
    let report = run_ok(
        pool.cmd()
            .arg("check")
            .arg("--meta")
            .arg(meta)
            .arg("--data")
            .arg(data),
    );
    assert!(report.contains("clean"), "{report}");
}

#[test]
fn a_pool_on_block_devices() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test attaches loop devices: run it as root"
    );
    require_tool("losetup", "mount");
    require_tool("qemu-io", "qemu-utils");
    let base = binary().parent().unwrap().join("e2e");
    std::fs::create_dir_all(&base).unwrap();
    let pool = Pool {
        dir: tempfile::tempdir_in(base).unwrap(),
    };
    let meta = LoopDevice::attach(&pool.dir.path().join("meta.img"), 64 * MIB);
    let data = LoopDevice::attach(&pool.dir.path().join("data.img"), 300 * MIB);
    let (meta, data) = (&meta.dev, &data.dev);
    let mkfs = |size: Option<&str>| {
        let mut c = pool.cmd();
        c.arg("mkfs")
            .arg("--meta")
            .arg(meta)
            .arg("--data")
            .arg(data);
        if let Some(size) = size {
            c.args(["--size", size]);
        }
        run(&mut c)
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

    let daemon = add(&pool, meta, data);
    daemon.qemu_io_ok(&[
        "write -P 0x5a 1000 300k",
        "write -P 0xa5 200M 1M",
        "write -P 0x3c 100M 64k",
        "discard 100M 64k",
        "flush",
    ]);
    run_ok(pool.cmd().args(["del", "-n", "0"]));
    check_clean(&pool, meta, data);

    let daemon = add(&pool, meta, data);
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
    run_ok(pool.cmd().args(["del", "-n", "0"]));
    check_clean(&pool, meta, data);
}
