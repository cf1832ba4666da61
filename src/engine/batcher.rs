//! The batcher: forms batches from the fair queue while the device runs the previous one.

use super::{Inner, Job};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Pops the next live job (fair order) compatible with `first` (or any job when `first` is
/// None) whose rows fit in `room`.
fn pop_job(inner: &Inner, first: Option<&Job>, room: usize) -> Option<Job> {
    let mut q = inner.queue();
    let mut dropped = 0;
    let found = q.pop(
        |j| first.is_none_or(|f| j.n() <= room && f.compatible(j)),
        &mut dropped,
    );
    inner.metrics.jobs_dropped.inc_by(dropped as u64);
    inner.metrics.queue_depth.set(q.len() as i64);
    drop(q);
    inner.space.notify_waiters();
    found
}

/// Fills batches of up to `max_batch_size` images, waiting at most `max_batch_wait` for more
/// work, and hands each to the device as soon as it can take one.
pub(super) async fn run(inner: Arc<Inner>, dev_tx: mpsc::Sender<Vec<Job>>) {
    let max = inner.cfg.max_batch_size.max(1);
    loop {
        // Wait until the device can take the next batch, then form it from what is queued.
        let Ok(permit) = dev_tx.reserve().await else {
            return;
        };
        let first = loop {
            let notified = inner.work.notified();
            if let Some(j) = pop_job(&inner, None, max) {
                break j;
            }
            notified.await;
        };
        let deadline = tokio::time::Instant::now() + inner.cfg.max_batch_wait;
        let mut rows = first.n();
        let mut batch = vec![first];
        while rows < max {
            let notified = inner.work.notified();
            if let Some(j) = pop_job(&inner, Some(&batch[0]), max - rows) {
                rows += j.n();
                batch.push(j);
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        permit.send(batch);
    }
}
