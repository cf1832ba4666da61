//! The batching engine: one bounded queue for all connections, fair between consumers
//! ([`queue`]), a batcher that fills batches up to `max_batch_size` images waiting at most
//! `max_batch_wait`, and one thread per device that owns the generator.
//!
//! Admission: one consumer's jobs, streams and single requests together, may hold a quarter of
//! `max_queue` (its fair share of the queue); streams of all consumers three quarters of it, so
//! the last quarter is kept for single requests (samples, grids, generate). A single request
//! beyond the consumer's share, or beyond the whole queue, answers 429 at once (a consumer with
//! no single request queued may always queue one, however large); a stream beyond them waits.
//! So no consumer, whatever it sends, can keep another's shards out of the queue, endless
//! streams slow each other down but never lock inspection out, and once queued every job is
//! served in the consumers' fair order ([`queue`]).
//!
//! Health: the engine warms up with one full batch (`max_batch_size` images) before it is
//! ready; [`Engine::wait_ready`] is how a server or an export waits for that, and a failed
//! warm-up is reported there (the server then refuses to start). Jobs queued meanwhile are
//! answered with the warm-up error, never left waiting.
//!
//! The batcher ([`batcher`]) reserves the (capacity 1) device channel before it forms a batch,
//! so exactly one batch is prepared while the device runs the current one, and a batch is
//! formed as late as possible (it picks up everything that arrived meanwhile). Jobs whose
//! consumer went away (the result receiver was dropped) are discarded when popped, never run.
//! The device thread ([`device`]) runs a one-pass generator batch by batch, and a stepped one
//! step by step, with new jobs joining the running ones between steps.
//!
//! The engine knows jobs, not samples: what a job holds (typed latents, classes, knobs, noise
//! keys) is built by [`crate::pipeline`].

mod batcher;
mod device;
mod queue;

pub use queue::Consumer;
use queue::FairQueue;

use crate::generator::{Batch, Generator, GeneratorSpec};
use crate::metrics::Metrics;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};

/// Errors of the engine, mapped to HTTP statuses in `api::error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("the generation queue is full ({0} jobs); retry shortly")]
    QueueFull(usize),
    #[error(
        "this consumer has {queued} requests queued, its fair share of the queue ({share}); retry when they are answered"
    )]
    ConsumerShareFull { queued: usize, share: usize },
    #[error("the generator is shutting down")]
    ShuttingDown,
    /// The generator failed on a batch (the typed error, shared by the batch's jobs).
    #[error("generator failure: {0}")]
    Backend(Arc<crate::generator::GeneratorError>),
    /// A task of ours failed (a join error, a panic outside the model).
    #[error("internal failure: {0}")]
    Internal(String),
    #[error("the generator failed its warm-up pass: {0}")]
    WarmUp(String),
}

/// Where the engine stands: one state for readiness probes, the API and `export`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The warm-up pass is running.
    WarmingUp,
    /// Serving.
    Ready,
    /// The warm-up pass failed (or panicked): nothing can be served.
    WarmUpFailed(String),
    /// The generator panicked on a batch: the server stays up for logs and liveness but is
    /// never ready again (a panicked model is suspect).
    Panicked(String),
}

/// Engine limits (from the CLI).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Images per generator forward pass.
    pub max_batch_size: usize,
    /// How long the batcher waits for more work before running a partial batch.
    pub max_batch_wait: Duration,
    /// Jobs that may wait in the queue; beyond it single requests get 429 and streams wait.
    pub max_queue: usize,
    /// Threads encoding PNG/JPEG/tar concurrently with the generator (the pipeline's pool).
    pub encode_threads: usize,
}

impl EngineConfig {
    /// Encoder threads when none are configured: one per core.
    pub fn default_encode_threads() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    }
}

/// The jobs of one request.
pub type JobInputs = Vec<Batch>;

/// Images for one job: `[n, C, H, W]` f32 flattened.
pub type JobOutput = Result<Arc<Vec<f32>>, EngineError>;

struct Job {
    input: Batch,
    enqueued: Instant,
    tx: oneshot::Sender<JobOutput>,
}

impl Job {
    /// Images in the job.
    fn n(&self) -> usize {
        self.input.len()
    }

    /// Jobs can share a forward pass when their space, class encoding and knobs agree.
    fn compatible(&self, other: &Job) -> bool {
        self.input.compatible(&other.input)
    }
}

struct Inner {
    cfg: EngineConfig,
    spec: GeneratorSpec,
    queue: Mutex<FairQueue>,
    /// Wakes the batcher when a job arrives.
    work: Notify,
    /// Wakes producers waiting for queue space.
    space: Notify,
    health: tokio::sync::watch::Sender<Health>,
    metrics: Arc<Metrics>,
}

impl Inner {
    /// The queue. A panic elsewhere while it was held cannot leave it half-updated (every
    /// critical section is a single push/remove), so a poisoned lock is recovered instead of
    /// cascading the panic into every request.
    fn queue(&self) -> std::sync::MutexGuard<'_, FairQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Handle to the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts the device thread and the batcher (on the current tokio runtime). The engine turns
    /// ready after a warm-up forward pass succeeds.
    pub fn start(generator: Box<dyn Generator>, cfg: EngineConfig, metrics: Arc<Metrics>) -> Self {
        let spec = generator.spec().clone();
        let inner = Arc::new(Inner {
            queue: Mutex::new(FairQueue::new(cfg.max_batch_size)),
            cfg,
            spec,
            work: Notify::new(),
            space: Notify::new(),
            health: tokio::sync::watch::Sender::new(Health::WarmingUp),
            metrics,
        });
        let (dev_tx, dev_rx) = mpsc::channel::<Vec<Job>>(1);
        let thread_inner = inner.clone();
        std::thread::Builder::new()
            .name("genrep-device".into())
            .spawn(move || device::run(generator, dev_rx, thread_inner))
            .expect("spawning the device thread");
        tokio::spawn(batcher::run(inner.clone(), dev_tx));
        Self { inner }
    }

    pub fn spec(&self) -> &GeneratorSpec {
        &self.inner.spec
    }
    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
    pub fn is_ready(&self) -> bool {
        self.health() == Health::Ready
    }
    pub fn health(&self) -> Health {
        self.inner.health.borrow().clone()
    }
    /// Waits for the end of the warm-up pass: `Ok` once ready, the warm-up error otherwise.
    pub async fn wait_ready(&self) -> Result<(), EngineError> {
        let mut rx = self.inner.health.subscribe();
        let h = rx
            .wait_for(|h| *h != Health::WarmingUp)
            .await
            .map_err(|_| EngineError::ShuttingDown)?
            .clone();
        match h {
            Health::Ready => Ok(()),
            Health::WarmUpFailed(e) => Err(EngineError::WarmUp(e)),
            Health::Panicked(e) => Err(EngineError::Backend(Arc::new(
                crate::generator::GeneratorError::Panicked(e),
            ))),
            Health::WarmingUp => unreachable!("waited for another state"),
        }
    }
    pub fn queue_depth(&self) -> usize {
        self.inner.queue().len()
    }

    /// Jobs one consumer may have queued, streams and single requests together.
    fn consumer_share(&self) -> usize {
        (self.inner.cfg.max_queue / 4).max(1)
    }

    /// Jobs all streams together may have queued (the rest is kept for single requests).
    fn stream_cap(&self) -> usize {
        (self.inner.cfg.max_queue * 3 / 4).max(1)
    }

    /// The most jobs one single request may queue at once and always find room for: the part
    /// of the queue streams cannot take.
    pub fn max_interactive_jobs(&self) -> usize {
        (self.inner.cfg.max_queue - self.stream_cap().min(self.inner.cfg.max_queue)).max(1)
    }

    /// Queues `jobs` (all or none) for `consumer`; gives them back, with the reason, when there
    /// is no room.
    fn push(
        &self,
        consumer: &Consumer,
        jobs: JobInputs,
        interactive: bool,
    ) -> Result<Vec<oneshot::Receiver<JobOutput>>, (JobInputs, EngineError)> {
        let mut q = self.inner.queue();
        let k = jobs.len();
        let share = self.consumer_share();
        // Why there is no room, if there is none.
        let full = |q: &FairQueue| {
            let (own_interactive, own_streams) = q.queued_by(&consumer.name);
            let queue_full = EngineError::QueueFull(self.inner.cfg.max_queue);
            if interactive {
                if own_interactive > 0 && own_interactive + k > share {
                    Some(EngineError::ConsumerShareFull {
                        queued: own_interactive,
                        share,
                    })
                } else {
                    (q.len() + k > self.inner.cfg.max_queue).then_some(queue_full)
                }
            } else {
                (q.len() >= self.stream_cap() || own_interactive + own_streams >= share)
                    .then_some(queue_full)
            }
        };
        if full(&q).is_some() {
            // Jobs of consumers that went away still count until the batcher meets them.
            let dead = q.purge_dead();
            self.inner.metrics.jobs_dropped.inc_by(dead as u64);
            if dead > 0 {
                // Room freed: streams waiting for it need not wait for the next batch.
                self.inner.space.notify_waiters();
            }
            if let Some(why) = full(&q) {
                return Err((jobs, why));
            }
        }
        let mut out = Vec::with_capacity(k);
        for input in jobs {
            let (tx, rx) = oneshot::channel();
            let job = Job {
                input,
                enqueued: Instant::now(),
                tx,
            };
            q.push(consumer, job, interactive);
            out.push(rx);
        }
        self.inner.metrics.queue_depth.set(q.len() as i64);
        drop(q);
        self.inner.work.notify_one();
        Ok(out)
    }

    fn refuse_if_failed(&self) -> Result<(), EngineError> {
        match self.health() {
            Health::WarmUpFailed(e) => Err(EngineError::WarmUp(e)),
            _ => Ok(()),
        }
    }

    /// Queues an interactive job (a sample, a grid, a generate) ahead of its consumer's stream
    /// jobs, or fails at once with `QueueFull` (the caller answers 429).
    pub fn try_submit(
        &self,
        consumer: &Consumer,
        job: Batch,
    ) -> Result<oneshot::Receiver<JobOutput>, EngineError> {
        let mut rx = self.try_submit_all(consumer, vec![job])?;
        Ok(rx.pop().expect("one job"))
    }

    /// Queues the jobs of one interactive request (a grid's rows) together, or none of them.
    pub fn try_submit_all(
        &self,
        consumer: &Consumer,
        jobs: JobInputs,
    ) -> Result<Vec<oneshot::Receiver<JobOutput>>, EngineError> {
        self.refuse_if_failed()?;
        self.push(consumer, jobs, true).map_err(|(_, why)| why)
    }

    /// Queues a stream's job, waiting for room within the streams' part of the queue and the
    /// consumer's share of it (a full queue slows producers down).
    pub async fn submit(&self, consumer: &Consumer, job: Batch) -> oneshot::Receiver<JobOutput> {
        let mut jobs = vec![job];
        loop {
            let notified = self.inner.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // After a failed warm-up the device loop answers every job with its error.
            match self.push(consumer, jobs, false) {
                Ok(mut rx) => return rx.pop().expect("one job"),
                Err((back, _)) => jobs = back,
            }
            notified.await;
        }
    }
}
