//! What a front end (ublk, NBD) serves, and how errors reach the client.
//!
//! Front ends turn requests into calls on a `BlockTarget`; they never know
//! what is behind it. The methods are `async` so that a front end can run
//! many requests concurrently on one thread (one task per ublk tag, or per
//! in-flight NBD request) and the target can put its data I/O into the front
//! end's io_uring. Nothing here requires `Send`: a target handle is used on
//! the thread that owns its ring.
//!
//! Offsets and lengths are bytes. Front ends check nothing but their own
//! protocol framing: the target validates alignment and range, so every
//! front end gives the same answer to the same bad request.

use std::cell::RefCell;

/// Sector size: every offset and length must be a multiple of it.
pub const SECTOR_BYTES: u64 = 512;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Misaligned or out-of-range request.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No space left to allocate for this write.
    #[error("no space left on the pool")]
    NoSpace,
    /// I/O error or a checksum mismatch; the string names what failed.
    #[error("I/O error: {0}")]
    Io(String),
    /// The operation is not supported by this target.
    #[error("not supported")]
    NotSupported,
}

impl TargetError {
    /// The positive errno a front end reports (negated for ublk).
    pub fn errno(&self) -> i32 {
        match self {
            TargetError::Invalid(_) => libc::EINVAL,
            TargetError::NoSpace => libc::ENOSPC,
            TargetError::Io(_) => libc::EIO,
            TargetError::NotSupported => libc::EOPNOTSUPP,
        }
    }
}

pub type TargetResult<T> = Result<T, TargetError>;

#[allow(async_fn_in_trait)]
pub trait BlockTarget {
    /// Size of the device in bytes (a multiple of `SECTOR_BYTES`).
    fn size_bytes(&self) -> u64;
    /// Fills `buf` with the bytes at `offset`.
    async fn read(&self, offset: u64, buf: &mut [u8]) -> TargetResult<()>;
    /// Writes `data` at `offset`; with `fua` the data is durable when this
    /// returns Ok.
    async fn write(&self, offset: u64, data: &[u8], fua: bool) -> TargetResult<()>;
    /// Every write that completed before this call is durable when it returns Ok.
    async fn flush(&self) -> TargetResult<()>;
    /// A write without FUA whose answer is sent on `answer` as soon as the
    /// target has accepted it, possibly before its data is on the device
    /// (reads and flushes after the answer still see it; a failure after
    /// the answer fails the next flush). The future ends when the write is
    /// done. By default the answer is the finished write's result.
    async fn write_answering(
        &self,
        offset: u64,
        data: &[u8],
        answer: futures::channel::oneshot::Sender<TargetResult<()>>,
    ) {
        let _ = answer.send(self.write(offset, data, false).await);
    }
    /// Frees the range; it reads as zeros afterwards.
    async fn discard(&self, offset: u64, len: u64) -> TargetResult<()>;
    /// Makes the range read as zeros; with `may_unmap` false the space stays
    /// allocated.
    async fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> TargetResult<()>;
    /// Which parts of the range from `offset` are allocated: consecutive
    /// runs from `offset` on, at least one, covering at most `len` bytes
    /// (a target may answer for less; the caller asks again for the rest).
    /// Writes answered before the call show as allocated. By default all of
    /// it is data: a target that does not know says nothing is a hole.
    async fn allocation(&self, offset: u64, len: u64) -> TargetResult<Vec<Allocation>> {
        check_range(self.size_bytes(), offset, len)?;
        Ok(vec![Allocation {
            bytes: len,
            hole: false,
        }])
    }
}

/// A run of bytes of one allocation state (`BlockTarget::allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub bytes: u64,
    /// Unallocated: reads as zeros and holds no space.
    pub hole: bool,
}

/// Checks a request's alignment and range against a device of `size_bytes`.
pub fn check_range(size_bytes: u64, offset: u64, len: u64) -> TargetResult<()> {
    if !offset.is_multiple_of(SECTOR_BYTES) || !len.is_multiple_of(SECTOR_BYTES) {
        return Err(TargetError::Invalid(format!(
            "offset {offset} or length {len} is not a multiple of {SECTOR_BYTES}"
        )));
    }
    match offset.checked_add(len) {
        Some(end) if end <= size_bytes => Ok(()),
        _ => Err(TargetError::Invalid(format!(
            "range {offset}+{len} is beyond the device size {size_bytes}"
        ))),
    }
}

/// A volatile in-memory target, for testing front ends without a pool.
pub struct MemTarget {
    bytes: RefCell<Vec<u8>>,
}

impl MemTarget {
    pub fn new(size_bytes: u64) -> MemTarget {
        assert_eq!(size_bytes % SECTOR_BYTES, 0);
        MemTarget {
            bytes: RefCell::new(vec![0; size_bytes as usize]),
        }
    }
}

impl BlockTarget for MemTarget {
    fn size_bytes(&self) -> u64 {
        self.bytes.borrow().len() as u64
    }
    async fn read(&self, offset: u64, buf: &mut [u8]) -> TargetResult<()> {
        check_range(self.size_bytes(), offset, buf.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&self.bytes.borrow()[start..start + buf.len()]);
        Ok(())
    }
    async fn write(&self, offset: u64, data: &[u8], _fua: bool) -> TargetResult<()> {
        check_range(self.size_bytes(), offset, data.len() as u64)?;
        let start = offset as usize;
        self.bytes.borrow_mut()[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
    async fn flush(&self) -> TargetResult<()> {
        Ok(())
    }
    async fn discard(&self, offset: u64, len: u64) -> TargetResult<()> {
        self.write_zeroes(offset, len, true).await
    }
    async fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> TargetResult<()> {
        check_range(self.size_bytes(), offset, len)?;
        let (start, end) = (offset as usize, (offset + len) as usize);
        self.bytes.borrow_mut()[start..end].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn mem_target_rejects_misaligned_and_out_of_range() {
        let t = MemTarget::new(8192);
        let mut buf = vec![0u8; 512];
        assert!(matches!(
            block_on(t.read(1, &mut buf)),
            Err(TargetError::Invalid(_))
        ));
        assert!(matches!(
            block_on(t.read(8192, &mut buf)),
            Err(TargetError::Invalid(_))
        ));
        assert!(matches!(
            block_on(t.read(u64::MAX - 511, &mut buf)),
            Err(TargetError::Invalid(_))
        ));
        block_on(t.write(512, &[7u8; 512], false)).unwrap();
        block_on(t.read(512, &mut buf)).unwrap();
        assert_eq!(buf, vec![7u8; 512]);
        block_on(t.discard(0, 1024)).unwrap();
        block_on(t.read(512, &mut buf)).unwrap();
        assert_eq!(buf, vec![0u8; 512]);
    }
}
