//! Data I/O to the pool's data device through the queue thread's own
//! io_uring: the same ring that carries the ublk commands, so one
//! `submit_and_wait` both completes requests and issues their backing I/O.
//!
//! The data device is registered as fixed file `DATA_FIXED_FILE` of every
//! queue ring (libublk registers `tgt.fds`; index 0 is /dev/ublkcN).

use crate::volume::DataIo;
use io_uring::{opcode, types};
use libublk::uring_async::ublk_submit_sqe_async;
use libublk::UblkUringData;
use std::io;

/// Index of the data device among the queue ring's fixed files.
pub(crate) const DATA_FIXED_FILE: u32 = 1;

/// Submits data-device I/O to the calling queue thread's ring. Only usable on
/// a ublk queue thread (the ring is thread-local), which is where the
/// front end creates it.
#[derive(Debug, Clone, Copy)]
pub struct QueueDataIo {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl QueueDataIo {
    pub(crate) fn new() -> QueueDataIo {
        QueueDataIo {
            _not_send: std::marker::PhantomData,
        }
    }

    async fn submit(&self, sqe: io_uring::squeue::Entry) -> io::Result<u32> {
        let res = ublk_submit_sqe_async(sqe, UblkUringData::Target as u64)
            .await
            .map_err(|e| io::Error::other(format!("io_uring submission: {e}")))?;
        if res < 0 {
            return Err(io::Error::from_raw_os_error(-res));
        }
        Ok(res as u32)
    }
}

impl DataIo for QueueDataIo {
    /// Reads `buf.len()` bytes at byte `offset` of the data device.
    async fn read_at(&self, mut offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let sqe = opcode::Read::new(
                types::Fixed(DATA_FIXED_FILE),
                rest.as_mut_ptr(),
                rest.len() as u32,
            )
            .offset(offset)
            .build();
            let n = self.submit(sqe).await? as usize;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the data device",
                ));
            }
            done += n;
            offset += n as u64;
        }
        Ok(())
    }

    /// Writes `buf` at byte `offset` of the data device.
    async fn write_at(&self, mut offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &buf[done..];
            let sqe = opcode::Write::new(
                types::Fixed(DATA_FIXED_FILE),
                rest.as_ptr(),
                rest.len() as u32,
            )
            .offset(offset)
            .build();
            let n = self.submit(sqe).await? as usize;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the data device took no bytes",
                ));
            }
            done += n;
            offset += n as u64;
        }
        Ok(())
    }

    /// fdatasync of the data device.
    async fn sync(&self) -> io::Result<()> {
        let sqe = opcode::Fsync::new(types::Fixed(DATA_FIXED_FILE))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.submit(sqe).await.map(|_| ())
    }
}
