//! The block-layer interface: positioned reads and writes of whole blocks and
//! a flush that makes every completed write durable.

use std::io;

/// A device the pool stores blocks on. Offsets and lengths are multiples of
/// the pool's block size; implementations may require 4096-byte alignment of
/// offsets (buffers need no alignment: backends that need it bounce).
pub trait Storage: Send {
    /// Size of the device in bytes.
    fn len_bytes(&self) -> u64;
    /// Reads `buf.len()` bytes at `offset`; a short read is an error.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes every `(offset, bytes)` pair; they may be issued together and
    /// complete in any order. Not durable until `flush` returns.
    fn write_batch(&mut self, writes: &[(u64, &[u8])]) -> io::Result<()>;
    /// Makes every write that completed before this call durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Starts a flush of the writes completed so far and returns without
    /// waiting; `flush_end` waits for it. Lets a caller overlap the flush
    /// with other work (the commit flushes the data device while it writes
    /// metadata). Nothing else may be issued on this device in between.
    /// By default the flush happens in `flush_end`.
    fn flush_begin(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Waits for the flush `flush_begin` started (by default, flushes).
    fn flush_end(&mut self) -> io::Result<()> {
        self.flush()
    }
}
