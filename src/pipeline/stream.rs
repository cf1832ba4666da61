//! Streaming producers: samples [start, end) → jobs on the engine → encoded tar chunks on a bounded
//! channel that feeds the HTTP body (or a file, for `genrep export`).
//!
//! A window of samples is in flight per stream so that concurrent streams fill the same batches;
//! each in-flight sample is a task that waits for its images and encodes them on the encode pool,
//! so encoding overlaps the device running later batches. Dropping the producer aborts those tasks,
//! which drops their result receivers, so the batcher discards their queued jobs.

use super::Pipeline;
use crate::engine::{Consumer, EngineError};
use crate::params::SampleRequest;
use crate::wds::TAR_END;
use bytes::Bytes;
use genrep_wire::MAX_INDEX;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// How a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// A finite shard: always completes (it is drained on shutdown, never cut short cleanly).
    Shard(u64),
    /// An endless or limited stream: ends at `min(limit end, MAX_INDEX)`, or at the next sample
    /// boundary on shutdown, with a valid tar end.
    Stream(Option<u64>),
}

/// A sample being generated and encoded, and its share of the consumer's read-ahead.
type InFlight = (
    AbortOnDropHandle<Result<Bytes, EngineError>>,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// Produces samples `start..` into `tx` until `end`; see [`StreamEnd`]. Returns when done, when the
/// receiver is gone (consumer disconnected), or after sending an error (which aborts the body).
pub(super) async fn produce(
    pipeline: Pipeline,
    consumer: Consumer,
    req: Arc<SampleRequest>,
    start: u64,
    end: StreamEnd,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    shutdown: CancellationToken,
) {
    let metrics = pipeline.metrics().clone();
    let label = crate::metrics::Metrics::consumer(&consumer.label);
    metrics.active_streams.inc();
    metrics.consumer_streams.get_or_create(&label).inc();
    struct Active(Arc<crate::metrics::Metrics>, crate::metrics::ConsumerLabels);
    impl Drop for Active {
        fn drop(&mut self) {
            self.0.active_streams.dec();
            self.0.consumer_streams.get_or_create(&self.1).dec();
        }
    }
    let _active = Active(metrics.clone(), label.clone());
    let consumer_samples = metrics.consumer_samples.get_or_create(&label).clone();

    let (stop_at, stops_on_shutdown) = match end {
        StreamEnd::Shard(e) => (e, false),
        StreamEnd::Stream(e) => (e.unwrap_or(MAX_INDEX).min(MAX_INDEX), true),
    };
    let per_sample = 1 + req.settings.views as usize;
    let window = (2 * pipeline.engine().config().max_batch_size / per_sample).clamp(2, 64);
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut next = start;
    loop {
        while inflight.len() < window
            && next < stop_at
            && !(stops_on_shutdown && shutdown.is_cancelled())
        {
            // The consumer's read-ahead budget: wait for it only with nothing in flight here
            // (holding samples while waiting for more would deadlock sibling streams that
            // hold the rest of the budget); otherwise send what is in flight first.
            let permit = match &consumer.readahead {
                Some((slots, size)) => {
                    let n = (per_sample as u32).min(*size);
                    if inflight.is_empty() {
                        tokio::select! {
                            p = slots.clone().acquire_many_owned(n) => match p {
                                Ok(p) => Some(p),
                                Err(_) => break,
                            },
                            _ = tx.closed() => return,
                            _ = shutdown.cancelled(), if stops_on_shutdown => break,
                        }
                    } else {
                        match slots.clone().try_acquire_many_owned(n) {
                            Ok(p) => Some(p),
                            Err(_) => break,
                        }
                    }
                }
                None => None,
            };
            let h = tokio::select! {
                h = pipeline.start_sample(&consumer, &req, next) => (h, permit),
                _ = tx.closed() => return,
                _ = shutdown.cancelled(), if stops_on_shutdown => break,
            };
            inflight.push_back(h);
            next += 1;
        }
        let Some((front, _)) = inflight.front_mut() else {
            break;
        };
        let res = tokio::select! {
            r = front => r,
            _ = tx.closed() => return,
            // Shutdown: nothing of the front sample was sent, so this is a sample boundary;
            // samples queued for later are dropped with `inflight` (their jobs are discarded).
            _ = shutdown.cancelled(), if stops_on_shutdown => break,
        };
        // Its read-ahead permit is released once the bytes are handed to the body.
        let _sent = inflight.pop_front();
        let res =
            res.unwrap_or_else(|e| Err(EngineError::Internal(format!("sample task failed: {e}"))));
        match res {
            Ok(bytes) => {
                metrics.samples_generated.inc();
                consumer_samples.inc();
                metrics.bytes_streamed.inc_by(bytes.len() as u64);
                if tx.send(Ok(bytes)).await.is_err() {
                    return;
                }
                if stops_on_shutdown && shutdown.is_cancelled() {
                    break;
                }
            }
            Err(e) => {
                // After the headers an error can only abort the connection: the consumer must
                // never see a clean end of a partial shard.
                tracing::error!(
                    "aborting stream at sample {}: {e}",
                    next - inflight.len() as u64 - 1
                );
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return;
            }
        }
    }
    // Samples read ahead past the end (shutdown) are not wanted any more.
    inflight.clear();
    metrics.bytes_streamed.inc_by(TAR_END.len() as u64);
    let _ = tx.send(Ok(Bytes::from_static(&TAR_END))).await;
}
