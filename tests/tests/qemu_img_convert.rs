//! Proves a multi-GiB sparse image survives `qemu-img convert` into the NBD
//! export and back out bit for bit (matching crc32c over the whole image),
//! with the holes costing no data space.

use rand::{Rng, RngCore, SeedableRng};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use tests::{require_tool, run_ok, Pool, GIB, MIB};

const IMAGE_BYTES: u64 = 3 * GIB;

fn crc_of(path: &Path) -> u32 {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut crc = 0u32;
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        total += n as u64;
    }
    assert_eq!(
        total,
        IMAGE_BYTES,
        "{} has the image's size",
        path.display()
    );
    crc
}

#[test]
fn sparse_image_converts_in_and_out_unchanged() {
    require_tool("qemu-img", "qemu-utils");
    let pool = Pool::mkfs("3G");
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let src = pool.dir.path().join("src.img");
    let mut f = std::fs::File::create(&src).unwrap();
    f.set_len(IMAGE_BYTES).unwrap();
    // 40 extents of random bytes at random sector offsets, 512 B to 2 MiB.
    let mut touched = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let len = rng.gen_range(1..=4096u64) * 512;
        let offset = rng.gen_range(0..(IMAGE_BYTES - len) / 512) * 512;
        let mut data = vec![0u8; len as usize];
        rng.fill_bytes(&mut data);
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&data).unwrap();
        touched.extend(offset / 4096..(offset + len).div_ceil(4096));
    }
    drop(f);
    let want = crc_of(&src);

    let d = pool.add();
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&d.uri),
    );
    let out = pool.dir.path().join("out.img");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &d.uri])
            .arg(&out),
    );
    assert_eq!(crc_of(&out), want, "seed {seed}");

    pool.del(0);
    let report = pool.check_clean();
    // Exactly the 4 KiB blocks holding written bytes take data space, never
    // the 3 GiB of holes.
    let used: u64 = report
        .split(", data blocks ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("check prints data blocks used");
    assert_eq!(used, touched.len() as u64, "{report}");
}
