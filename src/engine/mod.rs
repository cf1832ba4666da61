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
//! The batcher reserves the (capacity 1) device channel before it forms a batch, so exactly one
//! batch is prepared while the device runs the current one, and a batch is formed as late as
//! possible (it picks up everything that arrived meanwhile). Jobs whose consumer went away (the
//! result receiver was dropped) are discarded when popped, never run.

mod queue;
mod stream;

pub use queue::Consumer;
use queue::FairQueue;
pub use stream::{job_inputs, produce, StreamEnd};

use crate::generator::{ClassInput, Generator, GeneratorSpec};
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
    #[error("generator failure: {0}")]
    Backend(String),
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
    /// Threads encoding PNG/JPEG/tar concurrently with the generator.
    pub encode_threads: usize,
}

/// Generator rows and classes of the jobs of one request.
pub type JobInputs = Vec<(Vec<f32>, ClassInput)>;

/// Images for one job: `[n, C, H, W]` f32 flattened.
pub type JobOutput = Result<Arc<Vec<f32>>, EngineError>;

struct Job {
    rows: Vec<f32>,
    n: usize,
    classes: ClassInput,
    truncation: f64,
    enqueued: Instant,
    tx: oneshot::Sender<JobOutput>,
}

impl Job {
    /// Jobs can share a forward pass when the truncation input and the class encoding agree.
    fn compatible(&self, other: &Job) -> bool {
        self.truncation.to_bits() == other.truncation.to_bits()
            && matches!(
                (&self.classes, &other.classes),
                (ClassInput::None, ClassInput::None)
                    | (ClassInput::Ids(_), ClassInput::Ids(_))
                    | (ClassInput::Soft(_), ClassInput::Soft(_))
            )
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
    encode_slots: Arc<tokio::sync::Semaphore>,
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
            encode_slots: Arc::new(tokio::sync::Semaphore::new(cfg.encode_threads.max(1))),
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
            .spawn(move || device_loop(generator, dev_rx, thread_inner))
            .expect("spawning the device thread");
        tokio::spawn(batcher(inner.clone(), dev_tx));
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
            Health::Panicked(e) => {
                Err(EngineError::Backend(format!("the generator panicked: {e}")))
            }
            Health::WarmingUp => unreachable!("waited for another state"),
        }
    }
    pub fn queue_depth(&self) -> usize {
        self.inner.queue().len()
    }
    pub(crate) fn encode_slots(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.encode_slots
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
        truncation: f64,
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
        for (rows, classes) in jobs {
            let (tx, rx) = oneshot::channel();
            let n = rows.len() / self.inner.spec.latent_dim;
            let job = Job {
                rows,
                n,
                classes,
                truncation,
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
        rows: Vec<f32>,
        classes: ClassInput,
        truncation: f64,
    ) -> Result<oneshot::Receiver<JobOutput>, EngineError> {
        let mut rx = self.try_submit_all(consumer, vec![(rows, classes)], truncation)?;
        Ok(rx.pop().expect("one job"))
    }

    /// Queues the jobs of one interactive request (a grid's rows) together, or none of them.
    pub fn try_submit_all(
        &self,
        consumer: &Consumer,
        jobs: JobInputs,
        truncation: f64,
    ) -> Result<Vec<oneshot::Receiver<JobOutput>>, EngineError> {
        self.refuse_if_failed()?;
        self.push(consumer, jobs, truncation, true)
            .map_err(|(_, why)| why)
    }

    /// Queues a stream's job, waiting for room within the streams' part of the queue and the
    /// consumer's share of it (a full queue slows producers down).
    pub async fn submit(
        &self,
        consumer: &Consumer,
        rows: Vec<f32>,
        classes: ClassInput,
        truncation: f64,
    ) -> oneshot::Receiver<JobOutput> {
        let mut jobs = vec![(rows, classes)];
        loop {
            let notified = self.inner.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // After a failed warm-up the device loop answers every job with its error.
            match self.push(consumer, jobs, truncation, false) {
                Ok(mut rx) => return rx.pop().expect("one job"),
                Err((back, _)) => jobs = back,
            }
            notified.await;
        }
    }
}

/// Pops the next live job (fair order) compatible with `first` (or any job when `first` is
/// None) whose rows fit in `room`.
fn pop_job(inner: &Inner, first: Option<&Job>, room: usize) -> Option<Job> {
    let mut q = inner.queue();
    let mut dropped = 0;
    let found = q.pop(
        |j| first.is_none_or(|f| j.n <= room && f.compatible(j)),
        &mut dropped,
    );
    inner.metrics.jobs_dropped.inc_by(dropped as u64);
    inner.metrics.queue_depth.set(q.len() as i64);
    drop(q);
    inner.space.notify_waiters();
    found
}

async fn batcher(inner: Arc<Inner>, dev_tx: mpsc::Sender<Vec<Job>>) {
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
        let mut rows = first.n;
        let mut batch = vec![first];
        while rows < max {
            let notified = inner.work.notified();
            if let Some(j) = pop_job(&inner, Some(&batch[0]), max - rows) {
                rows += j.n;
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

/// Runs `z` in forward passes of at most `max` images. The batcher never merges jobs past `max`,
/// but one job can be larger (a 256-latent generate, a `views=16` sample at a small cap);
/// `max_batch_size` is the device's memory bound, so it holds for those too.
fn generate_capped(
    generator: &dyn Generator,
    z: &[f32],
    classes: &ClassInput,
    truncation: f64,
    max: usize,
    metrics: &Metrics,
) -> crate::generator::Result<Vec<f32>> {
    let spec = generator.spec();
    let (d, k) = (spec.latent_dim, spec.num_classes);
    let n = z.len() / d;
    let mut out = Vec::new();
    crate::generator::try_reserve(
        &mut out,
        n * spec.channels * spec.resolution * spec.resolution,
        &format!("the images of a {n}-image job"),
    )?;
    let mut start = 0;
    while start < n {
        let end = (start + max).min(n);
        let part = match classes {
            ClassInput::None => ClassInput::None,
            ClassInput::Ids(v) => ClassInput::Ids(v[start..end].to_vec()),
            ClassInput::Soft(v) => ClassInput::Soft(v[start * k..end * k].to_vec()),
        };
        let t = generator.generate(&z[start * d..end * d], &part, truncation)?;
        out.extend(t.flatten_all()?.to_vec1::<f32>()?);
        metrics.batches.inc();
        metrics.batch_size.observe((end - start) as f64);
        start = end;
    }
    Ok(out)
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn device_loop(generator: Box<dyn Generator>, mut rx: mpsc::Receiver<Vec<Job>>, inner: Arc<Inner>) {
    let spec = generator.spec().clone();
    // Warm-up: one full batch before reporting ready, so that a model whose largest forward
    // pass does not fit on the device fails here, not on the first busy minute.
    let n = inner.cfg.max_batch_size.max(1);
    let z = vec![0.0f32; n * spec.latent_dim];
    let classes = if spec.num_classes > 0 {
        ClassInput::Ids((0..n).map(|i| (i % spec.num_classes) as u32).collect())
    } else {
        ClassInput::None
    };
    tracing::info!(
        batch = n,
        "warming up the generator (one max_batch_size forward pass)"
    );
    let warm = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        generate_capped(
            generator.as_ref(),
            &z,
            &classes,
            1.0,
            n,
            &Metrics::default(),
        )
    }));
    let failure = match warm {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(p) => Some(format!("it panicked ({})", panic_text(p.as_ref()))),
    };
    if let Some(e) = failure {
        tracing::error!("generator warm-up at batch {n} failed: {e}");
        inner.health.send_replace(Health::WarmUpFailed(e.clone()));
        // Nothing will ever run: answer whatever is queued or still arrives.
        while let Some(batch) = rx.blocking_recv() {
            for j in batch {
                let _ = j.tx.send(Err(EngineError::WarmUp(e.clone())));
            }
        }
        return;
    }
    inner.health.send_replace(Health::Ready);
    tracing::info!(model = %spec.name, "generator ready");
    while let Some(batch) = rx.blocking_recv() {
        let start = Instant::now();
        for j in &batch {
            inner
                .metrics
                .queue_duration
                .observe((start - j.enqueued).as_secs_f64());
        }
        let n: usize = batch.iter().map(|j| j.n).sum();
        let mut z = Vec::with_capacity(n * spec.latent_dim);
        // The batcher only groups jobs with the same class encoding (`Job::compatible`).
        let mut classes = match &batch[0].classes {
            ClassInput::None => ClassInput::None,
            ClassInput::Ids(_) => ClassInput::Ids(Vec::with_capacity(n)),
            ClassInput::Soft(_) => ClassInput::Soft(Vec::with_capacity(n * spec.num_classes)),
        };
        for j in &batch {
            z.extend_from_slice(&j.rows);
            match (&mut classes, &j.classes) {
                (ClassInput::Ids(all), ClassInput::Ids(v)) => all.extend_from_slice(v),
                (ClassInput::Soft(all), ClassInput::Soft(v)) => all.extend_from_slice(v),
                _ => {}
            }
        }
        // A panic inside the model must not kill the only thread that answers jobs: this batch
        // gets a backend error, and the server reports itself not ready (a model that panicked
        // is suspect; a load balancer drains the replica and an orchestrator restarts it).
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            generate_capped(
                generator.as_ref(),
                &z,
                &classes,
                batch[0].truncation,
                inner.cfg.max_batch_size.max(1),
                &inner.metrics,
            )
        }));
        let result = run.unwrap_or_else(|panic| {
            let what = panic_text(panic.as_ref());
            inner.health.send_replace(Health::Panicked(what.clone()));
            tracing::error!("the generator panicked ({what}); /ready now answers 503");
            Err(crate::generator::GeneratorError::Panicked(what))
        });
        inner
            .metrics
            .inference_duration
            .observe(start.elapsed().as_secs_f64());
        inner.metrics.images_generated.inc_by(n as u64);
        match result {
            Ok(all) => {
                let per = all.len() / n;
                let mut off = 0;
                for j in batch {
                    let part = all[off * per..(off + j.n) * per].to_vec();
                    off += j.n;
                    let _ = j.tx.send(Ok(Arc::new(part)));
                }
            }
            Err(e) => {
                tracing::error!("generator failed on a batch of {n}: {e}");
                for j in batch {
                    let _ = j.tx.send(Err(EngineError::Backend(e.to_string())));
                }
            }
        }
    }
}
