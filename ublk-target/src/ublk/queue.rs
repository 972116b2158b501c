//! One ublk queue: one thread, one io_uring, one async task per tag.
//!
//! Each task fetches its first request once, then loops: execute the
//! request on the target, commit the result and fetch the next request in
//! one command. The target's data I/O goes into the same ring (see
//! `data_io`), so one thread waits on one ring for everything; wakes from
//! other threads reach it through an eventfd polled in that ring (`wake`).

use super::request::{completion_result, execute, Request};
use super::wake::{QueueSignal, WakeAcrossThreads};
use crate::target::BlockTarget;
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::{BufDesc, UblkError};
use std::rc::Rc;

/// Seconds without I/O after which libublk lets an idle queue sleep.
const QUEUE_IDLE_SECS: u64 = 20;

/// Serves queue `qid` of `dev` with `target` until the device stops.
pub(crate) fn run_queue<T: BlockTarget + 'static>(qid: u16, dev: &UblkDev, target: T) {
    let queue = match UblkQueue::new(qid, dev) {
        Ok(q) => Rc::new(q),
        Err(e) => {
            log::error!("ublk: queue {qid} setup failed: {e:?}");
            return;
        }
    };
    let signal = match QueueSignal::new() {
        Ok(signal) => signal,
        Err(e) => {
            log::error!("ublk: queue {qid} eventfd: {e}");
            return;
        }
    };
    let target = Rc::new(target);
    let executor = Rc::new(smol::LocalExecutor::new());
    let tasks: Vec<_> = queue
        .tags()
        .map(|tag| {
            let (queue, target) = (queue.clone(), target.clone());
            let task = async move {
                match serve_tag(&queue, tag, &*target).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(e) => log::error!("ublk: queue {qid} tag {tag} stopped: {e:?}"),
                }
            };
            executor.spawn(WakeAcrossThreads::new(task, signal.clone()))
        })
        .collect();
    // Not among `tasks`: it lives as long as the queue and never finishes.
    executor.spawn(signal.listen()).detach();

    let exe = executor.clone();
    smol::block_on(executor.run(async move {
        let run_ops = || while exe.try_tick() {};
        let done = || tasks.iter().all(|task| task.is_finished());
        if let Err(e) =
            libublk::wait_and_handle_io_events(&queue, Some(QUEUE_IDLE_SECS), run_ops, done).await
        {
            log::error!("ublk: queue {qid} event loop failed: {e:?}");
        }
    }));
}

/// The life of one tag: fetch, then execute / commit-and-fetch until the
/// queue goes down.
async fn serve_tag<T: BlockTarget>(
    queue: &UblkQueue<'_>,
    tag: u16,
    target: &T,
) -> Result<(), UblkError> {
    let mut buf = IoBuf::<u8>::new(queue.dev.dev_info.max_io_buf_bytes as usize);
    queue
        .submit_io_prep_cmd(tag, BufDesc::Slice(buf.as_slice()), 0, Some(&buf))
        .await?;
    loop {
        let iod = *queue.get_iod(tag);
        let request = Request::decode(iod.op_flags, iod.start_sector, iod.nr_sectors);
        let result = completion_result(execute(target, request, buf.as_mut_slice()).await);
        queue
            .submit_io_commit_cmd(tag, BufDesc::Slice(buf.as_slice()), result)
            .await?;
    }
}
