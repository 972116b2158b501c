//! One ublk request: decoded from the kernel's I/O descriptor, executed on a
//! `BlockTarget`, and turned into the completion result the kernel expects.
//!
//! The opcode is decoded before anything looks at the range: FLUSH carries
//! no range, and a garbage sector count on a FLUSH must not fail it. Range
//! and alignment checks belong to the target (`target::check_range`), so
//! every front end answers the same bad request the same way.
//! `completion_result` is the one place where an error becomes a negative
//! errno.

use crate::target::{BlockTarget, TargetError, TargetResult, SECTOR_BYTES};
use libublk::sys;
use log_ratelimit::{log_limited, LogLimit};

/// A request as the front end hands it to the target; offsets and lengths in
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        len: u64,
        fua: bool,
    },
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        may_unmap: bool,
    },
    /// An opcode this front end does not serve (zoned, WRITE_SAME, ...).
    Unsupported {
        op: u32,
    },
    /// A range whose byte offset overflows u64: only a broken descriptor.
    BadRange,
}

impl Request {
    /// Decodes the fields of a `ublksrv_io_desc`.
    pub(crate) fn decode(op_flags: u32, start_sector: u64, nr_sectors: u32) -> Request {
        let op = op_flags & 0xff;
        // Opcode first: FLUSH has no range to convert or check.
        if op == sys::UBLK_IO_OP_FLUSH {
            return Request::Flush;
        }
        let Some(offset) = start_sector.checked_mul(SECTOR_BYTES) else {
            return Request::BadRange;
        };
        let len = u64::from(nr_sectors) * SECTOR_BYTES;
        match op {
            sys::UBLK_IO_OP_READ => Request::Read { offset, len },
            sys::UBLK_IO_OP_WRITE => Request::Write {
                offset,
                len,
                fua: op_flags & sys::UBLK_IO_F_FUA != 0,
            },
            sys::UBLK_IO_OP_DISCARD => Request::Discard { offset, len },
            sys::UBLK_IO_OP_WRITE_ZEROES => Request::WriteZeroes {
                offset,
                len,
                may_unmap: op_flags & sys::UBLK_IO_F_NOUNMAP == 0,
            },
            op => Request::Unsupported { op },
        }
    }
}

/// Runs `req` on `target`, with `buf` the tag's I/O buffer (the kernel copies
/// write data into it before, and read data out of it after). Returns the
/// number of bytes the kernel should account for the request.
pub(crate) async fn execute<T: BlockTarget>(
    target: &T,
    req: Request,
    buf: &mut [u8],
) -> TargetResult<u32> {
    match req {
        Request::Read { offset, len } => {
            let data = buffer_part(buf, len)?;
            target.read(offset, data).await?;
            Ok(len as u32)
        }
        Request::Write { offset, len, fua } => {
            let data = buffer_part(buf, len)?;
            target.write(offset, data, fua).await?;
            Ok(len as u32)
        }
        Request::Flush => target.flush().await.map(|()| 0),
        Request::Discard { offset, len } => target.discard(offset, len).await.map(|()| 0),
        Request::WriteZeroes {
            offset,
            len,
            may_unmap,
        } => target
            .write_zeroes(offset, len, may_unmap)
            .await
            .map(|()| 0),
        Request::Unsupported { op } => {
            log::debug!("ublk: unsupported opcode {op}");
            Err(TargetError::NotSupported)
        }
        Request::BadRange => Err(TargetError::Invalid("sector number overflows".into())),
    }
}

/// The first `len` bytes of the tag's buffer; a request larger than the
/// buffer (the kernel never sends one: max_sectors says so) is invalid.
fn buffer_part(buf: &mut [u8], len: u64) -> TargetResult<&mut [u8]> {
    if len > buf.len() as u64 {
        return Err(TargetError::Invalid(format!(
            "request of {len} bytes exceeds the {} byte I/O buffer",
            buf.len()
        )));
    }
    Ok(&mut buf[..len as usize])
}

/// A program can fail every request it sends (a corrupted block read in a
/// loop, say).
static REQUEST_ERRORS: LogLimit = LogLimit::new("ublk: failed requests");

/// The completion result for the kernel: bytes done, or a negative errno.
/// This is the only place where a `TargetError` becomes an errno.
pub(crate) fn completion_result(result: TargetResult<u32>) -> i32 {
    match result {
        Ok(bytes) => bytes as i32,
        Err(e) => {
            if !matches!(e, TargetError::NotSupported) {
                log_limited!(
                    REQUEST_ERRORS,
                    log::Level::Warn,
                    "ublk: request failed: {e}"
                );
            }
            -e.errno()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::MemTarget;
    use futures::executor::block_on;
    use std::cell::RefCell;

    /// Records what reached the target, to check the decoded flags.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
    }

    impl BlockTarget for Recorder {
        fn size_bytes(&self) -> u64 {
            1 << 20
        }
        async fn read(&self, offset: u64, buf: &mut [u8]) -> TargetResult<()> {
            self.calls
                .borrow_mut()
                .push(format!("read {offset} {}", buf.len()));
            Ok(())
        }
        async fn write(&self, offset: u64, data: &[u8], fua: bool) -> TargetResult<()> {
            self.calls
                .borrow_mut()
                .push(format!("write {offset} {} fua={fua}", data.len()));
            Ok(())
        }
        async fn flush(&self) -> TargetResult<()> {
            self.calls.borrow_mut().push("flush".into());
            Ok(())
        }
        async fn discard(&self, offset: u64, len: u64) -> TargetResult<()> {
            self.calls
                .borrow_mut()
                .push(format!("discard {offset} {len}"));
            Ok(())
        }
        async fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> TargetResult<()> {
            self.calls
                .borrow_mut()
                .push(format!("zeroes {offset} {len} unmap={may_unmap}"));
            Ok(())
        }
    }

    fn run(target: &impl BlockTarget, op_flags: u32, sector: u64, sectors: u32) -> i32 {
        let mut buf = vec![0u8; 64 << 10];
        completion_result(block_on(execute(
            target,
            Request::decode(op_flags, sector, sectors),
            &mut buf,
        )))
    }

    #[test]
    fn flush_ignores_its_range_fields() {
        let t = Recorder::default();
        // A sector number that would overflow and a count beyond the device:
        // a FLUSH never looks at them.
        assert_eq!(run(&t, sys::UBLK_IO_OP_FLUSH, u64::MAX, u32::MAX), 0);
        assert_eq!(*t.calls.borrow(), vec!["flush".to_string()]);
    }

    #[test]
    fn flags_reach_the_target() {
        let t = Recorder::default();
        assert_eq!(
            run(&t, sys::UBLK_IO_OP_WRITE | sys::UBLK_IO_F_FUA, 8, 8),
            4096
        );
        assert_eq!(run(&t, sys::UBLK_IO_OP_WRITE, 8, 8), 4096);
        assert_eq!(run(&t, sys::UBLK_IO_OP_READ, 16, 2), 1024);
        assert_eq!(
            run(
                &t,
                sys::UBLK_IO_OP_WRITE_ZEROES | sys::UBLK_IO_F_NOUNMAP,
                0,
                8
            ),
            0
        );
        assert_eq!(run(&t, sys::UBLK_IO_OP_WRITE_ZEROES, 0, 8), 0);
        assert_eq!(run(&t, sys::UBLK_IO_OP_DISCARD, 8, 16), 0);
        assert_eq!(
            *t.calls.borrow(),
            vec![
                "write 4096 4096 fua=true",
                "write 4096 4096 fua=false",
                "read 8192 1024",
                "zeroes 0 4096 unmap=false",
                "zeroes 0 4096 unmap=true",
                "discard 4096 8192",
            ]
        );
    }

    #[test]
    fn errors_become_negative_errnos() {
        let t = MemTarget::new(1 << 20);
        // Beyond the end of the device: the target's range check.
        assert_eq!(run(&t, sys::UBLK_IO_OP_READ, 2048, 8), -libc::EINVAL);
        // Overflowing sector number on a data request.
        assert_eq!(
            run(&t, sys::UBLK_IO_OP_WRITE, u64::MAX / 2, 8),
            -libc::EINVAL
        );
        // Larger than the tag's buffer.
        assert_eq!(run(&t, sys::UBLK_IO_OP_READ, 0, 256), -libc::EINVAL);
        // An opcode the front end does not serve.
        assert_eq!(
            run(&t, sys::UBLK_IO_OP_ZONE_APPEND, 0, 8),
            -libc::EOPNOTSUPP
        );
    }

    #[test]
    fn data_round_trips_through_the_buffer() {
        let t = MemTarget::new(1 << 20);
        let mut buf = vec![0u8; 8192];
        buf[..4096].fill(0xa5);
        let write = Request::decode(sys::UBLK_IO_OP_WRITE, 64, 8);
        assert_eq!(
            completion_result(block_on(execute(&t, write, &mut buf))),
            4096
        );
        buf.fill(0);
        let read = Request::decode(sys::UBLK_IO_OP_READ, 64, 8);
        assert_eq!(
            completion_result(block_on(execute(&t, read, &mut buf))),
            4096
        );
        assert!(buf[..4096].iter().all(|&b| b == 0xa5));
        assert!(buf[4096..].iter().all(|&b| b == 0));
    }
}
