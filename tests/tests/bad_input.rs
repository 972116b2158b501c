//! Proves the real daemon survives bad input: a block corrupted on disk is
//! EIO for qemu-io (and the log names its volume offset) while other blocks
//! read fine; truncated handshakes, unknown options, oversized lengths and
//! out-of-range offsets from raw clients close or fail only that request
//! or connection, and qemu-io keeps working.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use tests::{require_tool, NbdClient, Pool, CMD_READ, CMD_WRITE};

#[test]
fn corrupted_data_reads_as_eio_with_the_offset_logged() {
    require_tool("qemu-io", "qemu-utils");
    let pool = Pool::mkfs("64M");
    let d = pool.add();
    d.qemu_io_ok(&["write -P 0xc3 8M 4096", "write -P 0xd4 9M 4096", "flush"]);
    pool.del(0);
    // Flip a byte inside the block holding 0xc3 on the data device.
    let mut data = std::fs::read(pool.data()).unwrap();
    let at = data
        .chunks(4096)
        .position(|b| b.iter().all(|&x| x == 0xc3))
        .expect("block on disk");
    data[at * 4096 + 7] ^= 0x80;
    std::fs::write(pool.data(), &data).unwrap();

    let d = pool.add();
    let out = d.qemu_io(&["read -P 0xc3 8M 4096"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Input/output error"), "{text}");
    d.qemu_io_ok(&["read -P 0xd4 9M 4096", "read -P 0 10M 4096"]);
    let log = std::fs::read_to_string(pool.run_dir().join("nbd-0.log")).unwrap();
    assert!(log.contains(&format!("volume offset {}", 8 << 20)), "{log}");
    // check only covers metadata and space: the pool is still consistent.
    pool.del(0);
    pool.check_clean();
}

fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue, // option replies before the close
        }
    }
}

#[test]
fn hostile_clients_do_not_hurt_the_export() {
    require_tool("qemu-io", "qemu-utils");
    let pool = Pool::mkfs("64M");
    let d = pool.add();
    d.qemu_io_ok(&["write -P 0x42 0 64k"]);

    // Truncated handshake: read the greeting, send half the client flags.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&[0, 0]).unwrap();
    drop(s);
    // An unknown option, then garbage instead of the next option.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&1u32.to_be_bytes()).unwrap();
    let mut opt = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
    opt.extend_from_slice(&4242u32.to_be_bytes());
    opt.extend_from_slice(&0u32.to_be_bytes());
    opt.extend_from_slice(&[0xff; 16]);
    s.write_all(&opt).unwrap();
    assert!(closed(&mut s));

    // In transmission: out-of-range and oversized requests.
    let mut c = NbdClient::connect(&d.socket).unwrap();
    c.send(CMD_READ, 1, 64 << 20, &[], 4096).unwrap();
    assert_eq!(c.reply().unwrap(), (1, 22));
    c.send(CMD_READ, 2, 0, &[], 64 << 20).unwrap();
    assert_eq!(c.reply().unwrap(), (2, 22));
    c.send(CMD_WRITE, 3, (64 << 20) - 512, &[1u8; 1024], 0)
        .unwrap();
    assert_eq!(c.reply().unwrap(), (3, 22));
    // BLOCK_STATUS without the base:allocation context negotiated (this
    // client negotiates nothing): EINVAL, and the connection goes on.
    const CMD_BLOCK_STATUS: u16 = 7;
    c.send(CMD_BLOCK_STATUS, 4, 0, &[], 4096).unwrap();
    assert_eq!(c.reply().unwrap(), (4, 22));
    assert_eq!(c.read_at(0, 512).unwrap(), vec![0x42; 512]);
    drop(c);

    // An oversized write header: refused, connection closed.
    let mut c = NbdClient::connect(&d.socket).unwrap();
    let mut header = 0x2560_9513u32.to_be_bytes().to_vec();
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&CMD_WRITE.to_be_bytes());
    header.extend_from_slice(&9u64.to_be_bytes());
    header.extend_from_slice(&0u64.to_be_bytes());
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    c.send_raw(&header);
    assert_eq!(c.reply().unwrap(), (9, 22));
    assert!(
        c.reply().is_err(),
        "the connection is closed after an oversized write"
    );

    d.qemu_io_ok(&["read -P 0x42 0 64k"]);
    let log = std::fs::read_to_string(pool.run_dir().join("nbd-0.log")).unwrap();
    assert!(log.contains("closing") && log.contains("exceeds"), "{log}");
}

/// A client that fails every request, or reconnects with a broken
/// handshake (garbage for an option), over and over cannot fill the disk
/// holding the daemon's log: each kind of line is rate-limited (the
/// log-ratelimit crate: at most `BURST` lines per `WINDOW`, then one line
/// counting the rest).
#[test]
fn floods_of_failures_are_logged_at_a_bounded_rate() {
    const BURST: usize = log_ratelimit::BURST as usize;
    let window_secs = log_ratelimit::WINDOW.as_secs();
    const FLOOD: u64 = 2000;
    let pool = Pool::mkfs("64M");
    let d = pool.add();
    let started = std::time::Instant::now();
    let mut c = NbdClient::connect(&d.socket).unwrap();
    for cookie in 0..FLOOD {
        c.send(CMD_READ, cookie, 64 << 20, &[], 4096).unwrap();
    }
    for _ in 0..FLOOD {
        assert_eq!(c.reply().unwrap().1, 22, "an out-of-range read is EINVAL");
    }
    drop(c);
    for _ in 0..FLOOD / 10 {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        // Client flags, then garbage where an option belongs.
        s.write_all(&1u32.to_be_bytes()).unwrap();
        s.write_all(&[0xff; 16]).unwrap();
        assert!(closed(&mut s));
    }
    // Every failure was answered; the export serves on.
    let mut c = NbdClient::connect(&d.socket).unwrap();
    assert_eq!(c.read_at(0, 4096).unwrap(), vec![0; 4096]);
    drop(c);
    let windows = (started.elapsed().as_secs() / window_secs + 1) as usize;
    pool.del(0);
    let log = std::fs::read_to_string(pool.run_dir().join("nbd-0.log")).unwrap();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    let failed = count("failed: ");
    let handshakes = count("handshake: ");
    assert!(
        (1..=BURST * windows).contains(&failed),
        "{failed} lines of failed requests for {FLOOD} failures in {windows} windows"
    );
    assert!(
        (1..=BURST * windows).contains(&handshakes),
        "{handshakes} lines of failed handshakes for {} in {windows} windows",
        FLOOD / 10
    );
}
