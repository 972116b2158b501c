//! Helpers shared by the end-to-end tests in `tests/tests/`: finding (and
//! building) the real `scoutfs-ublk` binary, pools in temporary
//! directories, NBD daemons started with `add` and stopped with `del`,
//! running client tools, and a small raw NBD client for tests that must
//! know exactly which writes were acknowledged.
//!
//! The binary: `$SCOUTFS_UBLK_BIN` if set; otherwise the tests run
//! `cargo build --release -p tools --bin scoutfs-ublk` once (a no-op when
//! up to date) and use `target/release/scoutfs-ublk` next to the test
//! executable (`env!("CARGO_BIN_EXE_..")` only works inside the binary's
//! own package).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Path of the `scoutfs-ublk` binary, built if needed.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SCOUTFS_UBLK_BIN") {
            return PathBuf::from(bin);
        }
        // target/release/deps/<test> -> target/release
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "tools", "--bin", "scoutfs-ublk"])
            .current_dir(workspace)
            .env(
                "CARGO_TARGET_DIR",
                profile_dir.parent().expect("target dir"),
            )
            .status()
            .expect("running cargo build for scoutfs-ublk");
        assert!(status.success(), "cargo build of scoutfs-ublk failed");
        let bin = profile_dir
            .parent()
            .unwrap()
            .join("release")
            .join("scoutfs-ublk");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}

/// Fails the test with a clear message unless it runs as root (`why`:
/// what it does that needs root).
pub fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "this test {why}: run it as root");
}

/// Fails the test with a clear message when a client tool is missing.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{tool}`: install it with `apt-get install {package}` (or run ci/setup)"
    );
}

/// Runs a command, returning its output; panics with both streams if it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// A pool (metadata + data devices: by default files in its directory)
/// and a private run directory.
pub struct Pool {
    pub dir: tempfile::TempDir,
    meta: PathBuf,
    data: PathBuf,
}

impl Pool {
    /// A fresh directory under the workspace's target dir (a real file
    /// system with O_DIRECT) for a pool not made yet.
    pub fn empty() -> Pool {
        let base = binary().parent().unwrap().join("e2e");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(base).unwrap();
        let (meta, data) = (dir.path().join("meta"), dir.path().join("data"));
        Pool { dir, meta, data }
    }
    /// `scoutfs-ublk mkfs --size size` on the files of `empty()`.
    pub fn mkfs(size: &str) -> Pool {
        let pool = Pool::empty();
        let mut c = pool.cmd();
        c.arg("mkfs").args(["--size", size]);
        run_ok(pool.pool_args(&mut c));
        pool
    }
    /// The pool on these devices instead (block devices, files elsewhere):
    /// what `pool_args`, `add` and `check_clean` name from then on.
    pub fn with_devices(mut self, meta: PathBuf, data: PathBuf) -> Pool {
        self.meta = meta;
        self.data = data;
        self
    }
    pub fn meta(&self) -> PathBuf {
        self.meta.clone()
    }
    pub fn data(&self) -> PathBuf {
        self.data.clone()
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    /// The binary with this pool's private run directory.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(binary());
        c.env("SCOUTFS_UBLK_RUN_DIR", self.run_dir());
        c
    }
    pub fn pool_args<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        c.arg("--meta")
            .arg(self.meta())
            .arg("--data")
            .arg(self.data())
    }
    /// `add --nbd unix:<run dir>/s.sock`; returns the daemon.
    pub fn add(&self) -> Daemon {
        let socket = self.dir.path().join("nbd.sock");
        let mut c = self.cmd();
        c.arg("add")
            .arg("--nbd")
            .arg(format!("unix:{}", socket.display()));
        let printed = run_ok(self.pool_args(&mut c));
        let entry = self.entry(0);
        assert!(
            printed.contains(entry["uri"].as_str().unwrap()),
            "add prints the URI:\n{printed}"
        );
        Daemon {
            pid: entry["pid"].as_u64().unwrap() as i32,
            uri: entry["uri"].as_str().unwrap().to_string(),
            socket,
            printed,
        }
    }
    /// The registry entry of NBD device `id`, from `list --json`.
    pub fn entry(&self, id: u64) -> serde_json::Value {
        let listed = run_ok(self.cmd().args(["list", "--json"]));
        let list: serde_json::Value = serde_json::from_str(&listed).expect("list --json is JSON");
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("device {id} not listed: {listed}"))
            .clone()
    }
    pub fn del(&self, id: u32) {
        run_ok(self.cmd().args(["del", "-n", &id.to_string()]));
    }
    /// Waits until no process holds the pool's files locked. A killed
    /// daemon's io_uring is torn down by the kernel after the process has
    /// exited, and its files (and their flocks) are released only then.
    pub fn wait_released(&self) {
        use std::os::fd::AsRawFd;
        for path in [self.meta(), self.data()] {
            let f = std::fs::File::open(&path).unwrap();
            for attempt in 0.. {
                // SAFETY: flock on a descriptor we own; closing it unlocks.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                    break;
                }
                assert!(
                    attempt < 3000,
                    "{} still locked 30 s after its daemon died",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Runs `check` and asserts it is clean; returns its output.
    pub fn check_clean(&self) -> String {
        let mut c = self.cmd();
        c.arg("check");
        let out = run_ok(self.pool_args(&mut c));
        assert!(out.contains("clean"), "{out}");
        out
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Stop any daemon still registered here (a failed test) by its pid
        // from this pool's private registry: never `del -a`, which would
        // also stop every ublk device of the machine.
        let Ok(dir) = std::fs::read_dir(self.run_dir()) else {
            return;
        };
        for entry in dir.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if let Some(pid) = json["pid"].as_u64() {
                // SAFETY: signalling a daemon this test started.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
        }
    }
}

pub struct Daemon {
    pub pid: i32,
    pub uri: String,
    pub socket: PathBuf,
    pub printed: String,
}

impl Daemon {
    pub fn kill9(&self) {
        // SAFETY: signalling the daemon this test started.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        while std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|s| !s.contains(") Z"))
            .unwrap_or(false)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    pub fn qemu_io(&self, commands: &[&str]) -> Output {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for command in commands {
            c.args(["-c", command]);
        }
        c.arg(&self.uri);
        run(&mut c)
    }
    /// qemu-io that must succeed and report no failed command.
    pub fn qemu_io_ok(&self, commands: &[&str]) -> String {
        let out = self.qemu_io(commands);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("fail") && !text.contains("error"),
            "qemu-io {commands:?}:\n{text}"
        );
        text
    }
}

/// A minimal blocking NBD client (fixed newstyle, OPT_GO, simple replies)
/// for tests that must track exactly which requests were acknowledged.
pub struct NbdClient {
    s: UnixStream,
    pub size_bytes: u64,
}

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_FLUSH: u16 = 3;

impl NbdClient {
    pub fn connect(socket: &Path) -> std::io::Result<NbdClient> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting)?;
        s.write_all(&3u32.to_be_bytes())?; // fixed newstyle, no zeroes
        let name = b"scoutfs";
        let mut opt = Vec::new();
        opt.extend_from_slice(&0x4948_4156_454f_5054u64.to_be_bytes());
        opt.extend_from_slice(&7u32.to_be_bytes()); // OPT_GO
        opt.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
        opt.extend_from_slice(&(name.len() as u32).to_be_bytes());
        opt.extend_from_slice(name);
        opt.extend_from_slice(&0u16.to_be_bytes());
        s.write_all(&opt)?;
        let mut size_bytes = 0;
        loop {
            let mut head = [0u8; 20];
            s.read_exact(&mut head)?;
            let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(head[16..20].try_into().unwrap()) as usize;
            let mut data = vec![0u8; len];
            s.read_exact(&mut data)?;
            match kind {
                1 => break, // ACK
                3 if u16::from_be_bytes([data[0], data[1]]) == 0 => {
                    size_bytes = u64::from_be_bytes(data[2..10].try_into().unwrap())
                }
                3 => {}
                other => return Err(std::io::Error::other(format!("OPT_GO reply {other:#x}"))),
            }
        }
        Ok(NbdClient { s, size_bytes })
    }

    pub fn send(
        &mut self,
        kind: u16,
        cookie: u64,
        offset: u64,
        data: &[u8],
        read_len: u32,
    ) -> std::io::Result<()> {
        let mut b = Vec::with_capacity(28 + data.len());
        b.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        let len = if kind == CMD_WRITE {
            data.len() as u32
        } else {
            read_len
        };
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b)
    }

    /// Sends bytes as they are (for malformed requests).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("sending raw bytes");
    }

    /// One simple reply: (cookie, errno). Read data, if any, follows: use `read_data`.
    pub fn reply(&mut self) -> std::io::Result<(u64, u32)> {
        let mut r = [0u8; 16];
        self.s.read_exact(&mut r)?;
        if u32::from_be_bytes(r[0..4].try_into().unwrap()) != 0x6744_6698 {
            return Err(std::io::Error::other("bad reply magic"));
        }
        Ok((
            u64::from_be_bytes(r[8..16].try_into().unwrap()),
            u32::from_be_bytes(r[4..8].try_into().unwrap()),
        ))
    }

    pub fn read_data(&mut self, len: usize) -> std::io::Result<Vec<u8>> {
        let mut d = vec![0u8; len];
        self.s.read_exact(&mut d)?;
        Ok(d)
    }

    /// Reads `len` bytes at `offset` (one request); Err on a nonzero errno.
    pub fn read_at(&mut self, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
        self.send(CMD_READ, u64::MAX, offset, &[], len)?;
        let (_, errno) = self.reply()?;
        if errno != 0 {
            return Err(std::io::Error::from_raw_os_error(errno as i32));
        }
        self.read_data(len as usize)
    }
}

/// A tmpfs mounted for the test's lifetime.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts one of `size` (mount's syntax: "4m") at `path` (root only).
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(path),
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
    pub fn resize(&self, size: &str) {
        run_ok(
            Command::new("mount")
                .args(["-o", &format!("remount,size={size}")])
                .arg(&self.path),
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
