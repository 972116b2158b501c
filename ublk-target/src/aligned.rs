//! `AlignedBuf`: a heap buffer whose address and capacity are multiples of
//! 4096, so it can be handed to O_DIRECT reads and writes as is.
//!
//! Dropped buffers go to a small per-thread cache by power-of-two size
//! class and are handed out again by `AlignedBuf::reuse`: large buffers
//! would otherwise be fresh mmaps whose page faults cost more than the I/O
//! (measured: a fifth of the daemon's time in a 1 MiB write workload).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every buffer: the data block size, which is also a multiple
/// of every logical block size O_DIRECT may demand.
pub const BUF_ALIGN_BYTES: usize = 4096;

/// Bytes of buffers one thread keeps for reuse: a few requests' worth of
/// the largest payloads, so a burst does not pin memory forever.
pub const BUF_CACHE_BYTES_MAX: usize = 64 << 20;
/// Buffers kept per size class.
const BUF_CACHE_PER_CLASS_MAX: usize = 64;
/// Size classes 4 KiB (2^12) ..= 32 MiB (2^25).
const CLASS_MIN_SHIFT: u32 = 12;
const CLASSES: usize = 14;

struct Cache {
    classes: [Vec<NonNull<u8>>; CLASSES],
    bytes: usize,
}

thread_local! {
    static CACHE: std::cell::RefCell<Cache> = std::cell::RefCell::new(Cache {
        classes: Default::default(),
        bytes: 0,
    });
}

fn class_of(capacity: usize) -> Option<usize> {
    let class = (capacity.trailing_zeros() - CLASS_MIN_SHIFT) as usize;
    (capacity.is_power_of_two() && class < CLASSES).then_some(class)
}

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// The buffer owns its memory exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zero-filled buffer of `len` bytes (capacity rounded up to 4096).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let capacity = len.div_ceil(BUF_ALIGN_BYTES).max(1) * BUF_ALIGN_BYTES;
        let layout = Layout::from_size_align(capacity, BUF_ALIGN_BYTES).expect("buffer layout");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout);
        };
        AlignedBuf { ptr, len, layout }
    }

    /// A buffer of `len` bytes whose contents are unspecified (whatever a
    /// previous user left, or zeros): for callers that overwrite all of it.
    pub fn reuse(len: usize) -> AlignedBuf {
        let capacity = len.max(1).next_power_of_two().max(BUF_ALIGN_BYTES);
        if let Some(class) = class_of(capacity) {
            let cached = CACHE.with(|c| {
                let mut c = c.borrow_mut();
                let ptr = c.classes[class].pop();
                if ptr.is_some() {
                    c.bytes -= capacity;
                }
                ptr
            });
            if let Some(ptr) = cached {
                let layout =
                    Layout::from_size_align(capacity, BUF_ALIGN_BYTES).expect("buffer layout");
                return AlignedBuf { ptr, len, layout };
            }
        }
        let mut buf = AlignedBuf::zeroed(capacity);
        buf.len = len;
        buf
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for capacity >= len bytes, initialised (zeroed).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let capacity = self.layout.size();
        if let Some(class) = class_of(capacity) {
            let kept = CACHE
                .try_with(|c| {
                    let mut c = c.borrow_mut();
                    if c.bytes + capacity > BUF_CACHE_BYTES_MAX
                        || c.classes[class].len() >= BUF_CACHE_PER_CLASS_MAX
                    {
                        return false;
                    }
                    c.bytes += capacity;
                    c.classes[class].push(self.ptr);
                    true
                })
                .unwrap_or(false);
            if kept {
                return;
            }
        }
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// True when `buf` can go to O_DIRECT as is: address and length 4096-aligned.
pub fn is_block_aligned(buf: &[u8]) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(BUF_ALIGN_BYTES)
        && buf.len().is_multiple_of(BUF_ALIGN_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed_at_any_length() {
        for len in [0, 1, 511, 4096, 4097, 1 << 20] {
            let mut buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.as_ptr() as usize % BUF_ALIGN_BYTES, 0);
            assert_eq!(buf.len(), len);
            assert!(buf.iter().all(|&b| b == 0));
            buf.fill(0xa5);
            assert!(buf.iter().all(|&b| b == 0xa5));
        }
        assert!(is_block_aligned(&AlignedBuf::zeroed(8192)));
        // A reused buffer is aligned, of the asked length, and comes back.
        let first = AlignedBuf::reuse(3 * 4096);
        let ptr = first.as_ptr();
        drop(first);
        let again = AlignedBuf::reuse(4 * 4096);
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(again.len(), 4 * 4096);
        assert_eq!(again.as_ptr() as usize % BUF_ALIGN_BYTES, 0);
        assert!(!is_block_aligned(&AlignedBuf::zeroed(8192)[512..4608]));
    }
}
