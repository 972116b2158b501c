//! The device parameters the kernel learns about /dev/ublkbN.

use libublk::sys;

/// Largest single request (and the size of each tag's buffer): 1 MiB keeps
/// a 1 MiB sequential request whole instead of split in two; depth x queues
/// x this is the daemon's buffer address space (touched only as used).
pub const IO_BUF_BYTES: u32 = 1 << 20;

/// Largest DISCARD / WRITE_ZEROES request, in 512-byte sectors (1 GiB): the
/// target frees or zeroes a range in one call, so this bounds one call's work.
pub(crate) const MAX_DISCARD_SECTORS: u32 = 1 << 21;

/// The block size the volume allocates and checksums in.
const PHYSICAL_BLOCK_SHIFT: u8 = 12;
const LOGICAL_BLOCK_SHIFT: u8 = 9;

/// Parameters for a device of `size_bytes` bytes: 512-byte logical and
/// 4 KiB physical blocks, a volatile write cache (so the kernel sends FLUSH)
/// and FUA, discard and write-zeroes, and `io_buf_bytes` as the largest
/// request.
pub(crate) fn device_params(size_bytes: u64, io_buf_bytes: u32) -> sys::ublk_params {
    sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
            logical_bs_shift: LOGICAL_BLOCK_SHIFT,
            physical_bs_shift: PHYSICAL_BLOCK_SHIFT,
            io_opt_shift: PHYSICAL_BLOCK_SHIFT,
            io_min_shift: PHYSICAL_BLOCK_SHIFT,
            max_sectors: io_buf_bytes >> 9,
            dev_sectors: size_bytes >> 9,
            ..Default::default()
        },
        discard: sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: 1 << PHYSICAL_BLOCK_SHIFT,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_declare_cache_fua_discard_and_sizes() {
        let p = device_params(1 << 30, IO_BUF_BYTES);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_VOLATILE_CACHE, 0);
        assert_ne!(p.basic.attrs & sys::UBLK_ATTR_FUA, 0);
        assert_ne!(p.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert_eq!(1u32 << p.basic.logical_bs_shift, 512);
        assert_eq!(1u32 << p.basic.physical_bs_shift, 4096);
        assert_eq!(p.basic.dev_sectors, (1 << 30) / 512);
        assert_eq!(p.basic.max_sectors as u64 * 512, IO_BUF_BYTES as u64);
        assert!(p.discard.max_write_zeroes_sectors > 0);
    }
}
