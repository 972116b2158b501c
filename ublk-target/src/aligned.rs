//! `AlignedBuf`: a buffer whose address and capacity are multiples of
//! 4096, so it can be handed to O_DIRECT reads and writes as is.
//!
//! Dropped buffers go to a small per-thread cache by power-of-two size
//! class and are handed out again by `AlignedBuf::reuse`: large buffers
//! would otherwise be fresh mmaps whose page faults cost more than the I/O
//! (measured: a fifth of the daemon's time in a 1 MiB write workload).
//!
//! Buffers of `MAPPED_BUF_MIN` bytes or more live in anonymous mappings
//! aligned to and advised for 2 MiB transparent huge pages (smaller ones
//! are carved from one such page), so their memory is physically
//! contiguous. A direct I/O on them is then one segment instead of one per
//! 4 KiB page, and on a virtual disk every segment is a descriptor the
//! host handles: 1 MiB sequential reads through the NBD export went from
//! 1,268-1,621 to 2,335-2,788 MiB/s on this project's machine (alternating
//! runs, bench-results/volume.md, session 11). Where the kernel has no
//! transparent huge pages the advice is ignored and the buffers are
//! ordinary memory.

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

/// Buffers at least this large are in huge-page mappings (their capacity a
/// power of two); smaller ones come from the heap. Below it a direct I/O
/// has few segments anyway, and a 2 MiB page would be carved into many.
pub const MAPPED_BUF_MIN: usize = 256 << 10;
const HUGE_PAGE_BYTES: usize = 2 << 20;

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

/// A cached buffer of exactly `capacity` bytes, if one is kept.
fn cache_take(capacity: usize) -> Option<NonNull<u8>> {
    let class = class_of(capacity)?;
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let ptr = c.classes[class].pop();
        if ptr.is_some() {
            c.bytes -= capacity;
        }
        ptr
    })
}

/// Keeps a buffer for reuse; false (the caller frees it) when the cache
/// is full or the thread is exiting.
fn cache_put(ptr: NonNull<u8>, capacity: usize) -> bool {
    let Some(class) = class_of(capacity) else {
        return false;
    };
    CACHE
        .try_with(|c| {
            let mut c = c.borrow_mut();
            if c.bytes + capacity > BUF_CACHE_BYTES_MAX
                || c.classes[class].len() >= BUF_CACHE_PER_CLASS_MAX
            {
                return false;
            }
            c.bytes += capacity;
            c.classes[class].push(ptr);
            true
        })
        .unwrap_or(false)
}

/// The capacity of a buffer of `len` bytes: a multiple of 4096, and a
/// power of two from `MAPPED_BUF_MIN` up.
fn capacity_for(len: usize) -> usize {
    let capacity = len.div_ceil(BUF_ALIGN_BYTES).max(1) * BUF_ALIGN_BYTES;
    if capacity >= MAPPED_BUF_MIN {
        capacity.next_power_of_two()
    } else {
        capacity
    }
}

/// Fresh zeroed memory of `capacity` bytes (from `capacity_for`). A buffer
/// smaller than a huge page is carved from a fresh huge-page mapping and
/// the rest of that mapping goes to the cache, as zeroed buffers.
fn alloc_backing(capacity: usize) -> NonNull<u8> {
    if capacity < MAPPED_BUF_MIN {
        let layout = Layout::from_size_align(capacity, BUF_ALIGN_BYTES).expect("buffer layout");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        return NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
    }
    if capacity >= HUGE_PAGE_BYTES {
        return map_huge(capacity);
    }
    let start = map_huge(HUGE_PAGE_BYTES);
    for piece in 1..HUGE_PAGE_BYTES / capacity {
        // SAFETY: inside the mapping just made.
        let ptr = unsafe { start.add(piece * capacity) };
        if !cache_put(ptr, capacity) {
            // SAFETY: a piece of the fresh mapping that nothing refers to.
            unsafe { free_backing(ptr, capacity) };
        }
    }
    start
}

/// Gives back memory from `alloc_backing`.
///
/// # Safety
/// `ptr` came from `alloc_backing` (or is one of its carved pieces) with
/// this capacity, and is not used afterwards.
unsafe fn free_backing(ptr: NonNull<u8>, capacity: usize) {
    if capacity >= MAPPED_BUF_MIN {
        // SAFETY: the caller's promise; the buffer is exactly this range of
        // a mapping (unmapping part of a huge page splits it and frees
        // that part).
        unsafe { libc::munmap(ptr.as_ptr().cast(), capacity) };
    } else {
        let layout = Layout::from_size_align(capacity, BUF_ALIGN_BYTES).expect("buffer layout");
        // SAFETY: the caller's promise.
        unsafe { dealloc(ptr.as_ptr(), layout) }
    }
}

/// An anonymous mapping of `bytes` (a multiple of the huge page size)
/// aligned to a huge page (the slack mapped for alignment is unmapped
/// again) and advised for transparent huge pages.
fn map_huge(bytes: usize) -> NonNull<u8> {
    debug_assert!(bytes.is_multiple_of(HUGE_PAGE_BYTES));
    let map_bytes = bytes + HUGE_PAGE_BYTES;
    // SAFETY: an anonymous mapping at an address of the kernel's choosing.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        let layout = Layout::from_size_align(map_bytes, HUGE_PAGE_BYTES).expect("buffer layout");
        std::alloc::handle_alloc_error(layout);
    }
    let base = map as usize;
    let start = base.next_multiple_of(HUGE_PAGE_BYTES);
    let end = start + bytes;
    // SAFETY: the ranges unmapped are the mapping's own slack around
    // [start, end); the advice is on the range kept (harmless if ignored).
    unsafe {
        if start > base {
            libc::munmap(map, start - base);
        }
        if base + map_bytes > end {
            libc::munmap(end as *mut libc::c_void, base + map_bytes - end);
        }
        libc::madvise(start as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
    }
    NonNull::new(start as *mut u8).expect("a mapping is never at address zero")
}

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes of memory at `ptr`: `capacity_for` of some length >= `len`.
    capacity: usize,
}

// The buffer owns its memory exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zero-filled buffer of `len` bytes (capacity rounded up to 4096,
    /// and to a power of two from `MAPPED_BUF_MIN`).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let capacity = capacity_for(len);
        AlignedBuf {
            ptr: alloc_backing(capacity),
            len,
            capacity,
        }
    }

    /// A buffer of `len` bytes whose contents are unspecified (whatever a
    /// previous user left, or zeros): for callers that overwrite all of it.
    pub fn reuse(len: usize) -> AlignedBuf {
        let capacity = capacity_for(len.max(1).next_power_of_two());
        match cache_take(capacity) {
            Some(ptr) => AlignedBuf { ptr, len, capacity },
            None => {
                let mut buf = AlignedBuf::zeroed(capacity);
                buf.len = len;
                buf
            }
        }
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
        if !cache_put(self.ptr, self.capacity) {
            // SAFETY: from `alloc_backing` with this capacity; dropped once.
            unsafe { free_backing(self.ptr, self.capacity) }
        }
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

    /// The range and `VmFlags` of the mapping that holds `addr`
    /// (/proc/self/smaps).
    fn mapping_of(addr: usize) -> Option<(usize, usize, String)> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let mut current = None;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((start, end)) = first.split_once('-') {
                if let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                ) {
                    current = Some((start, end));
                    continue;
                }
            }
            if let (Some(flags), Some((start, end))) = (line.strip_prefix("VmFlags:"), current) {
                if (start..end).contains(&addr) {
                    return Some((start, end, flags.trim().to_string()));
                }
            }
        }
        None
    }

    #[test]
    fn large_buffers_are_huge_page_mappings() {
        // A buffer below a huge page is carved from one: it starts the
        // mapping, and the rest of the page is the next buffer of its class.
        let mut first = AlignedBuf::zeroed(600 << 10);
        assert_eq!(first.capacity, 1 << 20);
        let start = first.as_ptr() as usize;
        assert_eq!(start % HUGE_PAGE_BYTES, 0);
        // (Adjacent mappings with the same flags may be merged into one.)
        let (map_start, map_end, flags) = mapping_of(start).expect("buffer is mapped");
        assert!(
            map_start <= start && map_end >= start + HUGE_PAGE_BYTES,
            "{flags}"
        );
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "not advised for huge pages: {flags}"
        );
        assert!(first.iter().all(|&b| b == 0));
        first.fill(0x5a);
        let second = AlignedBuf::reuse(1 << 20);
        assert_eq!(second.as_ptr() as usize, start + (1 << 20));
        assert!(second.iter().all(|&b| b == 0), "a fresh piece is zeroed");
        assert!(first.iter().all(|&b| b == 0x5a), "pieces do not overlap");

        // Two huge pages or more: a mapping of their own.
        let big = AlignedBuf::zeroed(3 << 20);
        assert_eq!(big.capacity, 4 << 20);
        let at = big.as_ptr() as usize;
        let (map_start, map_end, flags) = mapping_of(at).expect("buffer is mapped");
        assert_eq!(at % HUGE_PAGE_BYTES, 0);
        assert!(map_start <= at && map_end >= at + (4 << 20), "{flags}");
        assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");

        // Below the threshold buffers stay on the heap (no mapping of their own).
        let small = AlignedBuf::zeroed(MAPPED_BUF_MIN - 4096);
        assert_eq!(small.capacity, MAPPED_BUF_MIN - 4096);
    }
}
