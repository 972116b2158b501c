mod cache;
mod hash;
pub(crate) mod header;
pub(crate) mod index;
mod mem;
pub(crate) mod store;

pub(crate) use cache::{BlockBuf, SlotId, NO_SLOT};
pub(crate) use header::{BlockKind, BlockRef, HEADER_BYTES};
pub(crate) use store::BlockStore;

/// A prefetch hint for the cache line at `address` (never dereferenced, so
/// a stale address is harmless).
#[inline]
pub(crate) fn prefetch(address: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; it cannot fault or change memory.
    unsafe {
        std::arch::x86_64::_mm_prefetch(address as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
