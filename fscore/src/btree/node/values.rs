//! The value area, `value_low..values_end`, grows down toward the item array.
//! It is tiled by regions, each ending in a u16 trailer:
//!
//! - live: `value bytes | owner` where owner is the (even) item offset;
//! - free: `stale bytes | (len << 1) | 1` covering `len` bytes in all.
//!
//! Walking from `values_end` down reads a trailer, learns the region's length
//! (from the owner's `val_len`, or from the free trailer) and steps below it.
//! Freeing only marks a region and counts it in the header's `value_free`,
//! except that a region at `value_low` is handed straight back to the gap.
//! `compact` slides live regions up over the free ones; inserts call it only
//! when the gap alone is too small but gap + free space is enough.

use super::layout::*;

/// Length of the region ending at `end`, read from its trailer.
#[inline]
pub(super) fn region_len(buf: &[u8], end: usize) -> usize {
    let trailer = rd16(buf, end.wrapping_sub(OWNER_LEN));
    if trailer & FREE_TRAILER_BIT != 0 {
        (trailer >> 1) as usize
    } else {
        val_len(buf, trailer as usize) + OWNER_LEN
    }
}

/// Takes `len` bytes from the bottom of the gap; the caller checked room.
pub(super) fn alloc(buf: &mut [u8], len: usize) -> usize {
    let low = hdr_value_low(buf) - len;
    set_hdr_value_low(buf, low);
    low
}

/// Writes a value region at `start` owned by `item`.
pub(super) fn write(buf: &mut [u8], start: usize, item: usize, value: &[u8]) {
    let end = start + value.len();
    if let Some(dst) = buf.get_mut(start..end) {
        dst.copy_from_slice(value);
    }
    wr16(buf, end, item as u16);
}

/// Releases the region of `len` bytes at `start`.
pub(super) fn free(buf: &mut [u8], start: usize, len: usize) {
    let low = hdr_value_low(buf);
    if start == low {
        set_hdr_value_low(buf, low + len);
    } else {
        wr16(
            buf,
            start + len - OWNER_LEN,
            ((len as u16) << 1) | FREE_TRAILER_BIT,
        );
        set_hdr_value_free(buf, hdr_value_free(buf) + len);
    }
}

/// Slides every live region up against `values_end`, fixing each owner's
/// `val_off`, so all free space joins the gap.
pub(super) fn compact(buf: &mut [u8], geo: &Geometry) {
    let low = hdr_value_low(buf);
    let mut end = geo.values_end;
    let mut to = geo.values_end;
    while end > low {
        let trailer = rd16(buf, end - OWNER_LEN) as usize;
        let len = region_len(buf, end);
        if len < OWNER_LEN || len > end - low {
            debug_assert!(false, "corrupt value area during compaction");
            return;
        }
        let start = end - len;
        if trailer & FREE_TRAILER_BIT as usize == 0 {
            if to != end {
                buf.copy_within(start..end, to - len);
                wr16(buf, trailer + ITEM_VAL_OFF, (to - len) as u16);
            }
            to -= len;
        }
        end = start;
    }
    set_hdr_value_low(buf, to);
    set_hdr_value_free(buf, 0);
}
