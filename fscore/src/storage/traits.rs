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
}
