//! A daemon that panics (a bug) dies at once with its reason recorded: it
//! does not go on serving from a half-changed state, `list` shows it dead
//! with the panic's message, `del` fails with it (not "was not running"),
//! and the pool, opened again, holds every write a completed flush covered
//! and checks clean.
//!
//! The panic is injected (`SCOUTFS_UBLK_INJECT_PANIC_MS`) on a thread of
//! its own, as a panic in the pool's commit thread would come.

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};
use tests::{run, run_ok, NbdClient, Pool, CMD_FLUSH, CMD_WRITE};

const INJECT_PANIC_ENV: &str = "SCOUTFS_UBLK_INJECT_PANIC_MS";
/// Long enough to write and flush the blocks below first.
const PANIC_AFTER_MS: u64 = 5000;
const BLOCKS: u64 = 256;

fn pattern(block: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|i| (i.wrapping_mul(31) ^ block.wrapping_mul(7)) as u8)
        .collect()
}

#[test]
fn a_panicking_daemon_dies_with_its_reason_and_loses_no_flushed_write() {
    let pool = Pool::mkfs("256M");
    let socket = pool.dir.path().join("nbd.sock");
    let add = |inject: bool| {
        let mut c = pool.cmd();
        c.arg("add")
            .arg("--nbd")
            .arg(format!("unix:{}", socket.display()));
        if inject {
            c.env(INJECT_PANIC_ENV, PANIC_AFTER_MS.to_string());
            // The abort would leave a core file wherever the machine's
            // limit allows one: the daemon inherits a limit of none.
            // SAFETY: setrlimit only, between fork and exec.
            unsafe {
                c.pre_exec(|| {
                    let none = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::setrlimit(libc::RLIMIT_CORE, &none) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                })
            };
        }
        run_ok(pool.pool_args(&mut c));
    };
    add(true);
    let started = Instant::now();

    // Every block written and flushed, then half of them written again
    // with no flush: those may read back old or new after the crash.
    let mut client = NbdClient::connect(&socket).unwrap();
    for block in 0..BLOCKS {
        client
            .send(CMD_WRITE, block, block * 4096, &pattern(block), 0)
            .unwrap();
    }
    for _ in 0..BLOCKS {
        assert_eq!(client.reply().unwrap().1, 0, "write failed");
    }
    client.send(CMD_FLUSH, u64::MAX, 0, &[], 0).unwrap();
    assert_eq!(client.reply().unwrap().1, 0, "flush failed");
    for block in (0..BLOCKS).step_by(2) {
        client
            .send(CMD_WRITE, block, block * 4096, &pattern(block + BLOCKS), 0)
            .unwrap();
        assert_eq!(client.reply().unwrap().1, 0, "write failed");
    }
    assert!(
        started.elapsed() < Duration::from_millis(PANIC_AFTER_MS),
        "the writes took longer than the daemon had before its panic"
    );

    // The daemon is gone within moments of the panic, not serving on.
    let mut entry = pool.entry(0);
    while entry["state"] != "DEAD" {
        assert!(
            started.elapsed() < Duration::from_millis(PANIC_AFTER_MS) + Duration::from_secs(20),
            "the daemon still runs 20 s after its panic: {entry}"
        );
        std::thread::sleep(Duration::from_millis(50));
        entry = pool.entry(0);
    }
    assert!(
        client.read_at(0, 4096).is_err(),
        "the connection outlived the daemon"
    );
    drop(client);
    let failure = entry["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains("the daemon panicked") && failure.contains(INJECT_PANIC_ENV),
        "list --json gives the panic: {entry}"
    );
    let listed = run_ok(pool.cmd().arg("list"));
    assert!(
        listed.contains("nbd0: DEAD") && listed.contains("died: the daemon panicked"),
        "{listed}"
    );
    let log = std::fs::read_to_string(pool.run_dir().join("nbd-0.log")).unwrap();
    assert!(
        log.contains(INJECT_PANIC_ENV),
        "the log has the panic:\n{log}"
    );

    // del fails with the reason and what to do, and removes the entry.
    let out = run(pool.cmd().args(["del", "-n", "0"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "del succeeded: {stderr}");
    assert!(
        stderr.contains("the daemon panicked")
            && stderr.contains(INJECT_PANIC_ENV)
            && stderr.contains("`add` the pool again"),
        "{stderr}"
    );
    assert!(
        !pool.run_dir().join("nbd-0.failed").exists(),
        "del took the failure record"
    );
    let out = run(pool.cmd().args(["del", "-n", "0"]));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no device 0"),
        "a second del finds no device"
    );

    // The pool: clean, and every flushed write there.
    pool.wait_released();
    pool.check_clean();
    add(false);
    let mut client = NbdClient::connect(&socket).unwrap();
    for block in 0..BLOCKS {
        let got = client.read_at(block * 4096, 4096).unwrap();
        let newer = block % 2 == 0 && got == pattern(block + BLOCKS);
        assert!(
            got == pattern(block) || newer,
            "block {block} holds neither its flushed nor its later contents"
        );
    }
    drop(client);
    pool.del(0);
}
