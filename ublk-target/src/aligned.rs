//! `AlignedBuf`: a heap buffer whose address and capacity are multiples of
//! 4096, so it can be handed to O_DIRECT reads and writes as is.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every buffer: the data block size, which is also a multiple
/// of every logical block size O_DIRECT may demand.
pub const BUF_ALIGN_BYTES: usize = 4096;

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
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// True when `buf` can go to O_DIRECT as is: address and length 4096-aligned.
pub fn is_block_aligned(buf: &[u8]) -> bool {
    buf.as_ptr() as usize % BUF_ALIGN_BYTES == 0 && buf.len() % BUF_ALIGN_BYTES == 0
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
        assert!(!is_block_aligned(&AlignedBuf::zeroed(8192)[512..4608]));
    }
}
