//! The batching engine: one bounded queue for all connections, fair between consumers
//! ([`queue`]), a batcher that fills batches up to `max_batch_size` images waiting at most
//! `max_batch_wait`, and one thread per device that owns the generator.
//!
//! Admission: streams may fill the queue up to three quarters of `max_queue`, and one consumer's
//! streams up to a quarter of it; the last quarter is kept for single requests (samples, grids,
//! generate), which answer 429 only when the whole queue is full. So endless streams slow each
//! other down but never lock inspection requests out.
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};

/// Errors of the engine, mapped to HTTP statuses in `api::error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("the generation queue is full ({0} jobs); retry shortly")]
    QueueFull(usize),
    #[error("the generator is shutting down")]
    ShuttingDown,
    #[error("generator failure: {0}")]
    Backend(String),
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
    ready: AtomicBool,
    /// Set when the generator panicked or its warm-up pass failed: the server stays up (for logs
    /// and liveness) but is never ready again.
    panicked: AtomicBool,
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
            ready: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
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
        self.inner.ready.load(Ordering::Acquire)
    }
    /// Whether the generator panicked or failed its warm-up (then it is never ready again).
    pub fn has_panicked(&self) -> bool {
        self.inner.panicked.load(Ordering::Acquire)
    }
    pub fn queue_depth(&self) -> usize {
        self.inner.queue().len()
    }
    pub(crate) fn encode_slots(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.inner.encode_slots
    }

    /// Jobs one consumer's streams may have queued.
    fn stream_share(&self) -> usize {
        (self.inner.cfg.max_queue / 4).max(1)
    }

    /// Jobs all streams together may have queued (the rest is kept for single requests).
    fn stream_cap(&self) -> usize {
        (self.inner.cfg.max_queue * 3 / 4).max(1)
    }

    fn push(
        &self,
        consumer: &Consumer,
        rows: Vec<f32>,
        classes: ClassInput,
        truncation: f64,
        interactive: bool,
    ) -> Result<oneshot::Receiver<JobOutput>, (Vec<f32>, ClassInput)> {
        let mut q = self.inner.queue();
        let full = |q: &FairQueue| {
            if interactive {
                q.len() >= self.inner.cfg.max_queue
            } else {
                q.len() >= self.stream_cap() || q.queued_by(&consumer.name) >= self.stream_share()
            }
        };
        if full(&q) {
            // Jobs of consumers that went away still count until the batcher meets them.
            let dead = q.purge_dead();
            self.inner.metrics.jobs_dropped.inc_by(dead as u64);
            if full(&q) {
                return Err((rows, classes));
            }
        }
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
        self.inner.metrics.queue_depth.set(q.len() as i64);
        drop(q);
        self.inner.work.notify_one();
        Ok(rx)
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
        self.push(consumer, rows, classes, truncation, true)
            .map_err(|_| EngineError::QueueFull(self.inner.cfg.max_queue))
    }

    /// Queues a stream's job, waiting for room within the streams' part of the queue and the
    /// consumer's share of it (a full queue slows producers down).
    pub async fn submit(
        &self,
        consumer: &Consumer,
        mut rows: Vec<f32>,
        mut classes: ClassInput,
        truncation: f64,
    ) -> oneshot::Receiver<JobOutput> {
        loop {
            let notified = self.inner.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.push(consumer, rows, classes, truncation, false) {
                Ok(rx) => return rx,
                Err((r, c)) => {
                    rows = r;
                    classes = c;
                }
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
    let d = generator.spec().latent_dim;
    let k = generator.spec().num_classes;
    let n = z.len() / d;
    let mut out = Vec::new();
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

fn device_loop(generator: Box<dyn Generator>, mut rx: mpsc::Receiver<Vec<Job>>, inner: Arc<Inner>) {
    let spec = generator.spec().clone();
    // Warm-up: one real forward pass before reporting ready.
    let z = vec![0.0f32; spec.latent_dim];
    let classes = if spec.num_classes > 0 {
        ClassInput::Ids(vec![0])
    } else {
        ClassInput::None
    };
    let warm = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        generator.generate(&z, &classes, 1.0)
    }));
    match warm {
        Ok(Ok(_)) => inner.ready.store(true, Ordering::Release),
        Ok(Err(e)) => {
            tracing::error!("generator warm-up failed: {e}");
            inner.panicked.store(true, Ordering::Release);
            return;
        }
        Err(_) => {
            tracing::error!("generator warm-up panicked");
            inner.panicked.store(true, Ordering::Release);
            return;
        }
    }
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
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            inner.panicked.store(true, Ordering::Release);
            inner.ready.store(false, Ordering::Release);
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
