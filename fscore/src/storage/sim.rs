//! A simulated disk for tests: a volatile image (what reads see) and a
//! durable image (what survives a crash). Writes land in the volatile image
//! and in a list of writes pending since the last flush; a flush copies them
//! to the durable image. The disk can be told to fail at the Nth I/O event
//! (each write and each flush is one event); from then on every operation
//! fails, as if the machine had stopped. `crash_image` then builds what a
//! reboot would find: the durable image plus a random subset of the pending
//! writes, some of them torn at 512-byte sector granularity.

use super::Storage;
use std::io;
use std::sync::{Arc, Mutex};

/// Granularity of torn writes: a sector is written entirely or not at all.
const SECTOR_BYTES: usize = 512;

/// A disk image, as bytes (what a reboot finds).
pub type SimImage = Vec<u8>;

struct SimState {
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last flush, in issue order.
    pending: Vec<(u64, Vec<u8>)>,
    /// I/O events (writes and flushes) so far.
    events: u64,
    /// Fail at this event and at every later operation.
    fail_at_event: Option<u64>,
    failed: bool,
}

/// A handle on a simulated disk; clones share the same disk, so a test can
/// keep one to crash and inspect it after the pool that used it is dropped.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

impl SimDisk {
    /// A zeroed disk of `len_bytes`.
    pub fn new(len_bytes: u64) -> SimDisk {
        SimDisk::from_image(vec![0u8; len_bytes as usize])
    }

    /// A disk whose volatile and durable contents are `image`.
    pub fn from_image(image: SimImage) -> SimDisk {
        let state = SimState {
            volatile: image.clone(),
            durable: image,
            pending: Vec::new(),
            events: 0,
            fail_at_event: None,
            failed: false,
        };
        SimDisk {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Fail at the `event`th I/O event from now (0 = the next one).
    pub fn fail_after_events(&self, event: u64) {
        let mut state = self.state.lock().unwrap();
        state.fail_at_event = Some(state.events + event);
    }

    /// Number of I/O events (writes and flushes) so far.
    pub fn events(&self) -> u64 {
        self.state.lock().unwrap().events
    }

    /// Whether the disk has failed (every operation now returns an error).
    pub fn has_failed(&self) -> bool {
        self.state.lock().unwrap().failed
    }

    /// What a reboot would find: the durable image plus, for each pending
    /// write, chosen by `random` (a caller's seeded generator): kept whole,
    /// dropped, or torn (a random subset of its sectors kept).
    pub fn crash_image(&self, random: &mut dyn FnMut() -> u64) -> SimImage {
        let state = self.state.lock().unwrap();
        let mut image = state.durable.clone();
        for (offset, bytes) in &state.pending {
            let offset = *offset as usize;
            match random() % 3 {
                0 => image[offset..offset + bytes.len()].copy_from_slice(bytes),
                1 => {}
                _ => {
                    for (index, sector) in bytes.chunks(SECTOR_BYTES).enumerate() {
                        if random().is_multiple_of(2) {
                            let at = offset + index * SECTOR_BYTES;
                            image[at..at + sector.len()].copy_from_slice(sector);
                        }
                    }
                }
            }
        }
        image
    }

    /// The durable image (what survives a crash if no pending write lands).
    pub fn durable_image(&self) -> SimImage {
        self.state.lock().unwrap().durable.clone()
    }

    /// Overwrites bytes in both images (tests use it to corrupt a block).
    pub fn poke(&self, offset: u64, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap();
        let at = offset as usize;
        state.volatile[at..at + bytes.len()].copy_from_slice(bytes);
        state.durable[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Reads bytes of the volatile image (tests use it to inspect blocks).
    pub fn peek(&self, offset: u64, len: usize) -> Vec<u8> {
        let state = self.state.lock().unwrap();
        state.volatile[offset as usize..offset as usize + len].to_vec()
    }
}

impl SimState {
    /// Counts one I/O event; errors if the disk has failed or fails now.
    fn event(&mut self) -> io::Result<()> {
        self.check()?;
        if self.fail_at_event == Some(self.events) {
            self.failed = true;
            return Err(io::Error::other("simulated disk failure"));
        }
        self.events += 1;
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("simulated disk has failed"));
        }
        Ok(())
    }

    fn bounds(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let end = offset
            .checked_add(len as u64)
            .filter(|end| *end <= self.volatile.len() as u64);
        match end {
            Some(end) => Ok(offset as usize..end as usize),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "I/O beyond the end of the simulated disk",
            )),
        }
    }
}

impl Storage for SimDisk {
    fn len_bytes(&self) -> u64 {
        self.state.lock().unwrap().volatile.len() as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let state = self.state.lock().unwrap();
        state.check()?;
        let range = state.bounds(offset, buf.len())?;
        buf.copy_from_slice(&state.volatile[range]);
        Ok(())
    }

    fn write_batch(&mut self, writes: &[(u64, &[u8])]) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        for (offset, bytes) in writes {
            let range = state.bounds(*offset, bytes.len())?;
            // Each write of a batch is its own event: a failure in the
            // middle of a batch keeps the writes issued before it.
            state.event()?;
            state.volatile[range].copy_from_slice(bytes);
            state.pending.push((*offset, bytes.to_vec()));
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        state.event()?;
        let pending = std::mem::take(&mut state.pending);
        for (offset, bytes) in pending {
            let at = offset as usize;
            state.durable[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(())
    }
}
