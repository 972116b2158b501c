//! Proves the command line: `--help` for every subcommand, clear errors for
//! a missing device, a pool in use, a wrong format, a bad size and a
//! polling time past its bound, TCP
//! serving with the real port in the URI, `list` text and JSON, `dump`,
//! `del -a` stopping every daemon cleanly, and the warning for a sparse
//! pool larger than the free space of its file system.

use std::process::Command;
use tests::{binary, require_root, require_tool, run, run_ok, Pool, Tmpfs};

fn fails_with(c: &mut Command, needle: &str) {
    let out = run(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{c:?} should fail");
    assert!(
        err.contains(needle),
        "{c:?}: expected {needle:?} in:\n{err}"
    );
}

#[test]
fn help_for_every_subcommand() {
    for sub in [
        "mkfs", "add", "del", "list", "recover", "check", "dump", "bench",
    ] {
        let out = run_ok(Command::new(binary()).args([sub, "--help"]));
        assert!(out.contains("Usage:"), "{sub} --help:\n{out}");
    }
}

#[test]
fn clear_errors_for_bad_pools() {
    let pool = Pool::mkfs("64M");
    let missing = pool.dir.path().join("nope");
    fails_with(
        pool.cmd()
            .args(["add", "--meta"])
            .arg(&missing)
            .arg("--data")
            .arg(pool.data()),
        "does not exist",
    );
    // What cannot be a device, and one file given as both, are refused
    // by every command that opens a pool, naming the paths.
    for sub in ["check", "dump", "mkfs", "add"] {
        fails_with(
            pool.cmd()
                .args([sub, "--meta"])
                .arg(pool.meta())
                .arg("--data")
                .arg(pool.dir.path()),
            "not a regular file or a block device",
        );
        fails_with(
            pool.cmd()
                .args([sub, "--meta"])
                .arg(pool.meta())
                .arg("--data")
                .arg(pool.meta()),
            "are the same device",
        );
    }
    pool.check_clean();
    // check and dump name the missing device, whichever it is.
    for sub in ["check", "dump"] {
        let missing_text = format!("{} does not exist", missing.display());
        fails_with(
            pool.cmd()
                .args([sub, "--meta"])
                .arg(pool.meta())
                .arg("--data")
                .arg(&missing),
            &missing_text,
        );
        fails_with(
            pool.cmd()
                .args([sub, "--meta"])
                .arg(&missing)
                .arg("--data")
                .arg(pool.data()),
            &missing_text,
        );
    }
    fails_with(
        pool.cmd()
            .args(["mkfs", "--meta"])
            .arg(&missing)
            .arg("--data")
            .arg(&missing),
        "give --size",
    );
    // A size that is not whole 4 KiB blocks is refused, not rounded.
    for size in ["4097", "1", "6143"] {
        fails_with(
            pool.cmd()
                .args(["mkfs", "--size", size, "--meta"])
                .arg(&missing)
                .arg("--data")
                .arg(pool.dir.path().join("data2")),
            "not a multiple of 4096",
        );
    }
    assert!(!missing.exists(), "a refused mkfs created a file");
    // A data file that cannot be created (its directory is missing) after
    // the metadata file was: refused naming the file, and the metadata
    // file it had created is gone.
    let no_dir = pool.dir.path().join("no-dir").join("data");
    fails_with(
        pool.cmd()
            .args(["mkfs", "--size", "64M", "--meta"])
            .arg(&missing)
            .arg("--data")
            .arg(&no_dir),
        "no-dir/data: No such file or directory",
    );
    assert!(!missing.exists(), "a failed mkfs left the file it created");
    fails_with(
        pool.cmd()
            .args(["mkfs", "--size", "12Q", "--meta"])
            .arg(&missing)
            .arg("--data")
            .arg(&missing),
        "unknown unit",
    );
    // Polling is bounded: a tenth of a second at most (refused before the
    // pool is opened; the missing pool would fail otherwise, without
    // naming the flag).
    fails_with(
        pool.cmd()
            .args(["add", "--poll-us", "100001", "--meta"])
            .arg(&missing)
            .arg("--data")
            .arg(&missing),
        "--poll-us",
    );
    // In use: a second add and a check both refuse, naming the device
    // that serves the pool and how to stop it (check by a relative path).
    let d = pool.add();
    let serving = format!(
        "served by nbd0 (daemon pid {}; `scoutfs-ublk del -n 0`",
        d.pid
    );
    let mut again = pool.cmd();
    again.args(["add", "--nbd", "127.0.0.1:0"]);
    fails_with(pool.pool_args(&mut again), &serving);
    let mut check = pool.cmd();
    check
        .current_dir(pool.dir.path())
        .args(["check", "--meta", "meta", "--data", "data"]);
    fails_with(&mut check, "in use");
    fails_with(&mut check, &serving);
    pool.del(0);
    // An address in use: the daemon that could not listen tells `add`
    // why, and leaves no failure record behind for a later device of its
    // id.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut busy = pool.cmd();
    busy.args(["add", "--nbd"])
        .arg(taken.local_addr().unwrap().to_string());
    fails_with(pool.pool_args(&mut busy), "Address already in use");
    let records: Vec<_> = std::fs::read_dir(pool.run_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".failed"))
        .collect();
    assert!(records.is_empty(), "left behind: {records:?}");
    // recover is for ublk devices; an NBD export's id says so.
    let _d = pool.add();
    fails_with(
        pool.cmd().args(["recover", "-n", "0"]),
        "nbd0 is an NBD export",
    );
    pool.del(0);
    // Not a pool: a metadata file of garbage.
    let junk = pool.dir.path().join("junk");
    std::fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    fails_with(
        pool.cmd()
            .args(["add", "--foreground", "--meta"])
            .arg(&junk)
            .arg("--data")
            .arg(pool.data()),
        "the metadata device holds no pool",
    );
    // The devices given the wrong way round.
    fails_with(
        pool.cmd()
            .args(["check", "--meta"])
            .arg(pool.data())
            .arg("--data")
            .arg(pool.meta()),
        "the metadata device holds no pool",
    );
    // Another pool's data device: refused by add, check and mkfs, naming
    // the pool it belongs to; that pool is untouched.
    let other = Pool::mkfs("64M");
    for sub in ["add", "check", "mkfs"] {
        let fresh_meta = pool.dir.path().join("fresh-meta");
        let meta = if sub == "mkfs" {
            fresh_meta
        } else {
            pool.meta()
        };
        let mut c = pool.cmd();
        c.arg(sub);
        if sub == "add" {
            c.arg("--foreground");
        }
        fails_with(
            c.arg("--meta").arg(&meta).arg("--data").arg(other.data()),
            if sub == "mkfs" {
                "the data device already holds the data of pool 0x"
            } else {
                "the data device belongs to pool 0x"
            },
        );
    }
    other.check_clean();
    // A data device shorter than the pool it holds (a truncated file).
    let short = pool.dir.path().join("short");
    std::fs::write(&short, vec![0u8; 1 << 20]).unwrap();
    fails_with(
        pool.cmd()
            .args(["add", "--foreground", "--meta"])
            .arg(pool.meta())
            .arg("--data")
            .arg(&short),
        "the data device holds 1048576 bytes",
    );
    pool.check_clean();
    fails_with(pool.cmd().args(["del", "-n", "7"]), "no device 7");
    // A damaged registry entry is reported by list, not silently dropped;
    // an empty one (an id reserved by a starting daemon) is not.
    std::fs::create_dir_all(pool.run_dir()).unwrap();
    std::fs::write(pool.run_dir().join("nbd-5.json"), "{garbage").unwrap();
    std::fs::write(pool.run_dir().join("nbd-6.json"), "").unwrap();
    let listed = run(pool.cmd().arg("list"));
    let err = String::from_utf8_lossy(&listed.stderr);
    assert!(listed.status.success(), "{err}");
    assert!(err.contains("nbd-5.json: not a device entry"), "{err}");
    assert!(!err.contains("nbd-6.json"), "{err}");
}

#[test]
fn tcp_list_dump_and_del_all() {
    require_tool("nbdinfo", "libnbd-bin");
    let a = Pool::mkfs("64M");
    let mut c = a.cmd();
    c.args(["add", "--nbd", "127.0.0.1:0"]);
    let printed = run_ok(a.pool_args(&mut c));
    let entry = a.entry(0);
    let uri = entry["uri"].as_str().unwrap();
    assert!(
        uri.starts_with("nbd://127.0.0.1:") && !uri.contains(":0/"),
        "{uri}"
    );
    assert!(printed.contains(uri));
    let info = run_ok(Command::new("nbdinfo").arg(uri));
    assert!(info.contains("67108864"), "{info}");
    for can in [
        "can_multi_conn: true",
        "can_fast_zero: true",
        "can_zero: true",
    ] {
        assert!(info.contains(can), "nbdinfo lacks {can:?}:\n{info}");
    }
    assert_eq!(entry["state"], "LIVE");
    // A second daemon in the same run dir gets the next id.
    let b = Pool::mkfs("64M");
    let mut c = a.cmd();
    c.args(["add"])
        .arg("--meta")
        .arg(b.meta())
        .arg("--data")
        .arg(b.data());
    run_ok(&mut c);
    let listed = run_ok(a.cmd().arg("list"));
    assert!(
        listed.contains("nbd0: LIVE") && listed.contains("nbd1: LIVE"),
        "{listed}"
    );
    let pid1 = a.entry(1)["pid"].as_u64().unwrap();
    if std::path::Path::new("/dev/ublk-control").exists() {
        // `del -a` would stop this machine's ublk devices too.
        a.del(0);
        a.del(1);
    } else {
        run_ok(a.cmd().args(["del", "-a"]));
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid1}")).exists()
            || run_ok(Command::new("cat").arg(format!("/proc/{pid1}/stat"))).contains(") Z")
    );
    assert_eq!(run_ok(a.cmd().args(["list", "--json"])).trim(), "[]");
    let mut dump = a.cmd();
    dump.arg("dump");
    let out = run_ok(a.pool_args(&mut dump));
    assert!(
        out.contains("volume 0") && out.contains("btree") && out.contains("64.0 MiB"),
        "{out}"
    );
    a.check_clean();
    b.check_clean();
}

/// `bench` runs every job on a scratch pool and on a raw file, reports
/// requests that really completed, removes its scratch files, and refuses
/// bad arguments.
#[test]
fn bench_measures_both_systems_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_ok(
        Command::new(binary())
            .args([
                "bench",
                "--size",
                "64M",
                "--seconds",
                "0.2",
                "--depth",
                "4",
                "--json",
                "--dir",
            ])
            .arg(dir.path()),
    );
    let report: serde_json::Value = serde_json::from_str(&out).expect("bench --json is JSON");
    let jobs = report["jobs"].as_array().expect("jobs");
    let names: Vec<&str> = jobs.iter().map(|j| j["job"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "seqwrite-1m",
            "seqread-1m",
            "randwrite-4k",
            "randwrite-4k-flush32",
            "randread-4k"
        ]
    );
    for job in jobs {
        for system in ["scoutfs", "raw"] {
            let iops = job[system]["iops"].as_f64().unwrap();
            assert!(iops > 0.0, "{} on {system}: {job}", job["job"]);
        }
        assert!(job["ratio"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "scratch files left behind"
    );
    fails_with(
        Command::new(binary())
            .args(["bench", "--jobs", "nope", "--dir"])
            .arg(dir.path()),
        "unknown job",
    );
    fails_with(
        Command::new(binary())
            .args(["bench", "--size", "1000", "--dir"])
            .arg(dir.path()),
        "multiple of 1 MiB",
    );
}

/// A daemon is known by its pid and start time, not by the binary's name:
/// `del` stops a daemon started from a renamed copy (it used to drop the
/// entry as "not running" and leave the daemon serving, the pool locked),
/// and a stale entry whose pid now names another process is not signalled.
#[test]
fn del_stops_a_daemon_whatever_its_binary_is_called() {
    let pool = Pool::mkfs("64M");
    let renamed = pool.run_dir().with_file_name("storaged");
    std::fs::copy(binary(), &renamed).unwrap();
    let socket = pool.run_dir().with_file_name("nbd.sock");
    let mut c = Command::new(&renamed);
    c.env("SCOUTFS_UBLK_RUN_DIR", pool.run_dir())
        .arg("add")
        .arg("--nbd")
        .arg(format!("unix:{}", socket.display()));
    run_ok(pool.pool_args(&mut c));
    let entry = pool.entry(0);
    assert_eq!(entry["state"], "LIVE");
    let pid = entry["pid"].as_u64().unwrap();
    let stopped = run_ok(pool.cmd().args(["del", "-n", "0"]));
    assert!(stopped.contains("nbd0: stopped"), "{stopped}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || run_ok(Command::new("cat").arg(format!("/proc/{pid}/stat"))).contains(") Z"),
        "daemon {pid} still running after del"
    );
    pool.wait_released();
    pool.check_clean();

    // An entry naming a live process that is not the daemon (this test,
    // with a start time that is not its own) is stale: removed, and the
    // process is not signalled.
    let entry_path = pool.run_dir().join("nbd-3.json");
    let mut stale = entry.clone();
    stale["id"] = 3.into();
    stale["pid"] = std::process::id().into();
    stale["started"] = 1.into();
    std::fs::write(&entry_path, serde_json::to_string(&stale).unwrap()).unwrap();
    let listed = run_ok(pool.cmd().arg("list"));
    assert!(listed.contains("nbd3: DEAD"), "{listed}");
    let out = run_ok(pool.cmd().args(["del", "-n", "3"]));
    assert!(out.contains("was not running"), "{out}");
    assert!(!entry_path.exists());
}

/// Bytes a file has allocated on its file system.
fn allocated_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// `mkfs` on a pool's devices refuses, naming the pool, and the volume's
/// data stays; `mkfs --force` formats over it (the data is gone, the new
/// pool checks clean).
#[test]
fn mkfs_refuses_a_pool_unless_forced() {
    let pool = Pool::mkfs("64M");
    let daemon = pool.add();
    daemon.qemu_io_ok(&["write -P 0x3c 8192 12k"]);
    pool.del(0);
    let before = pool.check_clean();
    let mut again = pool.cmd();
    again.args(["mkfs", "--size", "64M"]);
    fails_with(pool.pool_args(&mut again), "already holds pool 0x");
    assert_eq!(
        pool.check_clean(),
        before,
        "the refused mkfs changed nothing"
    );
    let daemon = pool.add();
    daemon.qemu_io_ok(&["read -P 0x3c 8192 12k"]);
    pool.del(0);

    let mut forced = pool.cmd();
    forced.args(["mkfs", "--size", "64M", "--force"]);
    run_ok(pool.pool_args(&mut forced));
    pool.check_clean();
    let daemon = pool.add();
    daemon.qemu_io_ok(&["read -P 0 8192 12k"]);
    pool.del(0);
}

/// `add` run with relative paths registers and prints absolute ones: `list`
/// from another directory names the pool's files, and the printed URI
/// reaches the export from anywhere.
#[test]
fn add_with_relative_paths_registers_absolute_ones() {
    require_tool("qemu-io", "qemu-utils");
    let pool = Pool::mkfs("64M");
    let dir = pool.dir.path();
    let printed = run_ok(pool.cmd().current_dir(dir).args([
        "add",
        "--meta",
        "meta",
        "--data",
        "./data",
        "--nbd",
        "unix:rel.sock",
    ]));
    let entry = pool.entry(0);
    assert_eq!(
        entry["meta"].as_str().unwrap(),
        pool.meta().to_str().unwrap()
    );
    assert_eq!(
        entry["data"].as_str().unwrap(),
        pool.data().to_str().unwrap()
    );
    let uri = entry["uri"].as_str().unwrap();
    let socket = dir.join("rel.sock");
    assert!(
        uri.ends_with(&format!("socket={}", socket.display())),
        "{uri}"
    );
    assert!(printed.contains(uri), "{printed}");
    // From the root directory, the printed URI works.
    let out = run_ok(Command::new("qemu-io").current_dir("/").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x77 0 4k",
        "-c",
        "read -P 0x77 0 4k",
        uri,
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    pool.del(0);
}

/// `check`'s data accounting adds up to the device: blocks the volume
/// maps, the journal's region, free space and the label block, as `dump`
/// counts them.
#[test]
fn check_accounts_for_every_data_block() {
    let pool = Pool::mkfs("64M");
    let daemon = pool.add();
    daemon.qemu_io_ok(&["write -P 0x12 0 1M", "write -P 0x13 8M 4k"]);
    pool.del(0);
    let checked = pool.check_clean();
    let numbers = |text: &str, after: &str| -> Vec<u64> {
        let at = text
            .find(after)
            .unwrap_or_else(|| panic!("{after:?} in {text}"));
        text[at + after.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|word| !word.is_empty())
            .take(3)
            .map(|word| word.parse().unwrap())
            .collect()
    };
    let [used, journal, free] = numbers(&checked, ", data blocks ")[..] else {
        panic!("{checked}")
    };
    assert_eq!(used, 256 + 1, "{checked}");
    let mut dump = pool.cmd();
    dump.arg("dump");
    let dumped = run_ok(pool.pool_args(&mut dump));
    // "data block       4096 bytes, 20480 blocks (80.0 MiB)"
    let total = numbers(&dumped, "\ndata block ")[1];
    // Block 0 is the data device's label.
    assert_eq!(used + journal + free + 1, total, "{checked}\n{dumped}");
    assert!(journal > 0, "{checked}");
}

/// `mkfs --preallocate` writes every block of the pool's files (sparse by
/// default), refuses a pool in use without writing anything, and the pool
/// it makes serves and checks clean.
#[test]
fn mkfs_preallocate_writes_the_files_and_spares_a_pool_in_use() {
    let sparse = Pool::mkfs("64M");
    let data_len = std::fs::metadata(sparse.data()).unwrap().len();
    assert!(
        allocated_bytes(&sparse.data()) < data_len / 4,
        "a default pool's data file is sparse"
    );

    let pool = Pool::mkfs("64M");
    let mut c = pool.cmd();
    c.args(["mkfs", "--size", "64M", "--preallocate", "--force"]);
    run_ok(pool.pool_args(&mut c));
    for path in [pool.meta(), pool.data()] {
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(
            allocated_bytes(&path) >= len,
            "{}: {} of {len} bytes allocated",
            path.display(),
            allocated_bytes(&path)
        );
    }
    pool.check_clean();

    // In use: refused before a byte is written, the volume's data intact.
    let daemon = pool.add();
    daemon.qemu_io_ok(&["write -P 0x5c 4096 64k"]);
    let mut again = pool.cmd();
    again.args(["mkfs", "--size", "64M", "--preallocate", "--force"]);
    fails_with(pool.pool_args(&mut again), "in use");
    daemon.qemu_io_ok(&["read -P 0x5c 4096 64k"]);
    pool.del(0);
    pool.check_clean();
}

/// `del` stops a daemon whose client is still connected (idle, between
/// requests): the connection ends, the daemon commits and exits, and what
/// the client wrote is there after `add`.
#[test]
fn del_stops_a_daemon_with_a_connected_client() {
    let pool = Pool::mkfs("64M");
    let d = pool.add();
    let mut client = tests::NbdClient::connect(&d.socket).unwrap();
    client
        .send(tests::CMD_WRITE, 7, 8192, &[0x3cu8; 4096], 0)
        .unwrap();
    assert_eq!(client.reply().unwrap(), (7, 0));
    // `del` fails unless the daemon exits within its wait.
    let out = run_ok(pool.cmd().args(["del", "-n", "0"]));
    assert!(out.contains("nbd0: stopped"), "{out}");
    // The server closed the connection: no reply ever comes.
    assert!(
        client.reply().is_err(),
        "the connection stayed open after del"
    );
    pool.check_clean();
    let d = pool.add();
    let mut client = tests::NbdClient::connect(&d.socket).unwrap();
    assert_eq!(client.read_at(8192, 4096).unwrap(), vec![0x3cu8; 4096]);
    drop(client);
    pool.del(0);
}

/// `bench --serve-raw` (ci/bench-nbd's front-end-only row) serves the
/// file's own bytes through the NBD server: what is in the file reads back
/// over NBD, and what a client writes lands at the same offset in the
/// file once the server stops on SIGTERM. A file whose size is not whole
/// sectors is refused.
#[test]
fn bench_serve_raw_serves_the_file_as_it_is() {
    use std::io::{BufRead, BufReader};
    require_tool("qemu-io", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("raw.img");
    let mut bytes = vec![0u8; 16 << 20];
    bytes[1 << 20..2 << 20].fill(0x3c);
    std::fs::write(&file, &bytes).unwrap();
    let socket = dir.path().join("raw.sock");
    let mut server = Command::new(binary())
        .args(["bench", "--serve-raw"])
        .arg(&file)
        .arg("--nbd")
        .arg(format!("unix:{}", socket.display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("raw, no volume"), "{line:?}");
    let uri = format!("nbd+unix:///scoutfs?socket={}", socket.display());
    let qemu_io = |commands: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for command in commands {
            c.args(["-c", command]);
        }
        let text = run_ok(c.arg(&uri));
        assert!(!text.contains("fail"), "{commands:?}: {text}");
    };
    qemu_io(&[
        "read -P 0 0 1M",
        "read -P 0x3c 1M 1M",
        "write -P 0xa5 4608 8192",
        "flush",
    ]);
    // SAFETY: signalling the server this test started.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(server.wait().unwrap().success());
    let after = std::fs::read(&file).unwrap();
    assert!(after[4608..4608 + 8192].iter().all(|&b| b == 0xa5));
    assert_eq!(after[..4608], bytes[..4608]);
    assert_eq!(after[4608 + 8192..], bytes[4608 + 8192..]);

    std::fs::write(&file, [0u8; 1000]).unwrap();
    fails_with(
        Command::new(binary())
            .args(["bench", "--serve-raw"])
            .arg(&file)
            .args(["--nbd", "unix:/nonexistent/s.sock"]),
        "multiple of 512",
    );
}

/// A data file restored from an older copy beside a newer metadata file
/// (two commits apart) is refused by add and check, naming the older
/// device; with its own data file back, the pool serves what it had.
#[test]
fn add_refuses_a_stale_copy_of_the_data_device() {
    require_tool("qemu-io", "qemu-utils");
    let pool = Pool::mkfs("64M");
    let stale = pool.dir.path().join("data.old");
    // Each add-write-del cycle ends with a commit (del commits first).
    for (round, pattern) in ["0x11", "0x22", "0x33"].into_iter().enumerate() {
        let d = pool.add();
        d.qemu_io_ok(&[&format!("write -P {pattern} 0 64k")]);
        pool.del(0);
        if round == 0 {
            std::fs::copy(pool.data(), &stale).unwrap();
        }
    }
    let current = pool.dir.path().join("data.current");
    std::fs::rename(pool.data(), &current).unwrap();
    std::fs::copy(&stale, pool.data()).unwrap();
    for sub in ["add", "check"] {
        let mut c = pool.cmd();
        c.arg(sub);
        if sub == "add" {
            c.arg("--foreground");
        }
        fails_with(
            pool.pool_args(&mut c),
            "the data device is older than the metadata device",
        );
    }
    std::fs::rename(&current, pool.data()).unwrap();
    pool.check_clean();
    let d = pool.add();
    d.qemu_io_ok(&["read -P 0x33 0 64k"]);
    pool.del(0);
}

#[test]
fn mkfs_and_add_warn_of_a_sparse_pool_larger_than_its_file_system() {
    require_root("mounts a small tmpfs for the pool");
    let pool = Pool::empty();
    let small = Tmpfs::mount(&pool.dir.path().join("small"), "96m");
    let files = |name: &str| {
        (
            small.path.join(format!("{name}.meta")),
            small.path.join(format!("{name}.data")),
        )
    };
    let mkfs = |size: &str, (meta, data): &(std::path::PathBuf, std::path::PathBuf)| {
        run(pool
            .cmd()
            .args(["mkfs", "--size", size, "--meta"])
            .arg(meta)
            .arg("--data")
            .arg(data))
    };
    let warning = "can still grow by";

    // 1 GiB (and its metadata and slack) in sparse files on 96 MiB: made,
    // with the warning naming the free space and the way out.
    let big = files("big");
    let out = mkfs("1G", &big);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(warning)
            && stderr.contains("has 96.0 MiB free")
            && stderr.contains("--preallocate"),
        "{stderr}"
    );
    // `add` says it again, and serves.
    let socket = pool.dir.path().join("nbd.sock");
    let out = run(pool
        .cmd()
        .args(["add", "--nbd"])
        .arg(format!("unix:{}", socket.display()))
        .arg("--meta")
        .arg(&big.0)
        .arg("--data")
        .arg(&big.1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains(warning), "{stderr}");
    pool.del(0);

    // A pool that fits what is free: no warning.
    let out = mkfs("8M", &files("fits"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("warning"),
        "{stderr}"
    );
}
