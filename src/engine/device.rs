//! The device thread: the one owner of the generator. It warms the generator up, then runs the
//! batcher's batches — in one pass each, or, for a stepped generator, one step at a time for
//! every running job, so jobs that arrive meanwhile join between steps instead of waiting for a
//! whole run (continuous batching).

use super::{EngineError, Health, Inner, Job};
use crate::generator::{
    Batch, ClassInput, Generator, GeneratorError, Knobs, Latents, NoiseKey, Space, Stepped,
};
use crate::metrics::Metrics;
use candle_core::Tensor;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Every stage of a batch: one pass, or all steps of a stepped generator.
fn complete(g: &dyn Generator, b: &Batch) -> crate::generator::Result<Tensor> {
    match g.stepped() {
        None => g.run(b),
        Some(s) => {
            let mut x = s.begin(b)?;
            for t in 0..s.steps() {
                x = s.step(&x, &vec![t; b.len()], b)?;
            }
            s.finish(&x, b)
        }
    }
}

/// Runs a batch in passes of at most `max` images. The batcher never merges jobs past `max`,
/// but one job can be larger (a 256-latent generate, a `views=16` sample at a small cap);
/// `max_batch_size` is the device's memory bound, so it holds for those too.
fn run_capped(
    g: &dyn Generator,
    b: &Batch,
    max: usize,
    metrics: &Metrics,
) -> crate::generator::Result<Vec<f32>> {
    let spec = g.spec();
    let n = b.len();
    let mut out = Vec::new();
    crate::generator::try_reserve(
        &mut out,
        n * spec.image_len(),
        &format!("the images of a {n}-image job"),
    )?;
    let mut start = 0;
    while start < n {
        let end = (start + max).min(n);
        let t = complete(g, &b.rows(spec, start, end))?;
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

/// Runs `f`, turning a panic inside the model into an error and the engine's health into
/// `Panicked`: the only thread that answers jobs must not die with it (a model that panicked
/// is suspect; a load balancer drains the replica and an orchestrator restarts it).
fn guarded<T>(
    inner: &Inner,
    f: impl FnOnce() -> crate::generator::Result<T>,
) -> crate::generator::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic_text(panic.as_ref());
        inner.health.send_replace(Health::Panicked(what.clone()));
        tracing::error!("the generator panicked ({what}); /ready now answers 503");
        Err(GeneratorError::Panicked(what))
    })
}

/// A full batch of zeros in z with default knobs: the warm-up input.
fn warm_up_batch(g: &dyn Generator, n: usize) -> Batch {
    let spec = g.spec();
    Batch {
        latents: Latents {
            space: Space::Z,
            z: vec![0.0; n * spec.latent_dim],
            offset: None,
        },
        classes: if spec.num_classes > 0 {
            ClassInput::Ids((0..n).map(|i| (i % spec.num_classes) as u32).collect())
        } else {
            ClassInput::None
        },
        knobs: Knobs::defaults(spec),
        noise: NoiseKey::explicit(0, n),
    }
}

pub(super) fn run(
    generator: Box<dyn Generator>,
    mut rx: mpsc::Receiver<Vec<Job>>,
    inner: Arc<Inner>,
) {
    let g = generator.as_ref();
    // Warm-up: one full batch before reporting ready, so that a model whose largest forward
    // pass does not fit on the device fails here, not on the first busy minute.
    let n = inner.cfg.max_batch_size.max(1);
    tracing::info!(
        batch = n,
        "warming up the generator (one max_batch_size forward pass)"
    );
    let warm = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_capped(g, &warm_up_batch(g, n), n, &Metrics::default())
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
    tracing::info!(model = %g.spec().name, "generator ready");
    match g.stepped() {
        None => one_pass(g, rx, &inner),
        Some(s) => stepped(g, s, rx, &inner),
    }
}

/// Records the wait of each job of a batch that starts now.
fn observe_waits(inner: &Inner, jobs: &[Job], start: Instant) {
    for j in jobs {
        inner
            .metrics
            .queue_duration
            .observe((start - j.enqueued).as_secs_f64());
    }
}

/// Answers each job with its rows of `images` (`per` floats per image), or all with the error.
fn answer(jobs: Vec<Job>, result: crate::generator::Result<Vec<f32>>, per: usize) {
    match result {
        Ok(all) => {
            let mut off = 0;
            for j in jobs {
                let part = all[off * per..(off + j.n()) * per].to_vec();
                off += j.n();
                let _ = j.tx.send(Ok(Arc::new(part)));
            }
        }
        Err(e) => {
            // Logged where it is answered (the API logs it once, with the id it gives the
            // client; export and check report it).
            let e = EngineError::Backend(Arc::new(e));
            for j in jobs {
                let _ = j.tx.send(Err(e.clone()));
            }
        }
    }
}

fn image_len(g: &dyn Generator) -> usize {
    g.spec().image_len()
}

/// One-pass generators: each batch runs whole.
fn one_pass(g: &dyn Generator, mut rx: mpsc::Receiver<Vec<Job>>, inner: &Inner) {
    let max = inner.cfg.max_batch_size.max(1);
    while let Some(batch) = rx.blocking_recv() {
        let start = Instant::now();
        observe_waits(inner, &batch, start);
        let n: usize = batch.iter().map(Job::n).sum();
        // The batcher only groups compatible jobs (`Job::compatible`).
        let input = Batch::concat(batch.iter().map(|j| &j.input)).expect("batches are not empty");
        let result = guarded(inner, || run_capped(g, &input, max, &inner.metrics));
        inner
            .metrics
            .inference_duration
            .observe(start.elapsed().as_secs_f64());
        inner.metrics.images_generated.inc_by(n as u64);
        answer(batch, result, image_len(g));
    }
}

/// A job of a stepped generator between steps.
struct Running {
    job: Job,
    /// Its state after `t` steps.
    x: Tensor,
    t: usize,
}

/// Stepped generators: every running job takes one step per round, in passes of at most
/// `max_batch_size` rows of compatible jobs (rows may be at different steps); between rounds
/// the batch the batcher prepared joins, so a long run never holds the device for the jobs
/// behind it. A job leaves as soon as it took its last step.
fn stepped(g: &dyn Generator, s: &dyn Stepped, mut rx: mpsc::Receiver<Vec<Job>>, inner: &Inner) {
    let max = inner.cfg.max_batch_size.max(1);
    let steps = s.steps();
    let per = image_len(g);
    let mut running: Vec<Running> = Vec::new();
    loop {
        // Idle: wait for work. Busy: take what the batcher prepared, while there is room.
        let mut arrived = Vec::new();
        if running.is_empty() {
            match rx.blocking_recv() {
                Some(b) => arrived.extend(b),
                None => return,
            }
        } else if running.iter().map(|r| r.job.n()).sum::<usize>() < max {
            if let Ok(b) = rx.try_recv() {
                arrived.extend(b);
            }
        }
        let now = Instant::now();
        observe_waits(inner, &arrived, now);
        for job in arrived {
            match guarded(inner, || s.begin(&job.input)) {
                Ok(x) => running.push(Running { job, x, t: 0 }),
                Err(e) => answer(vec![job], Err(e), per),
            }
        }
        // Jobs whose consumer went away are not worth another step.
        let before = running.len();
        running.retain(|r| !r.job.tx.is_closed());
        inner
            .metrics
            .jobs_dropped
            .inc_by((before - running.len()) as u64);
        // One round: group compatible jobs into passes of at most `max` rows.
        let mut pending: Vec<Running> = std::mem::take(&mut running);
        while !pending.is_empty() {
            let first = pending.remove(0);
            let mut rows = first.job.n();
            let mut group = vec![first];
            let mut i = 0;
            while i < pending.len() {
                if rows + pending[i].job.n() <= max && group[0].job.compatible(&pending[i].job) {
                    rows += pending[i].job.n();
                    group.push(pending.remove(i));
                } else {
                    i += 1;
                }
            }
            let started = Instant::now();
            let input = Batch::concat(group.iter().map(|r| &r.job.input)).expect("not empty");
            let t: Vec<usize> = group
                .iter()
                .flat_map(|r| std::iter::repeat_n(r.t, r.job.n()))
                .collect();
            let stepped = guarded(inner, || {
                let xs: Vec<&Tensor> = group.iter().map(|r| &r.x).collect();
                s.step(&Tensor::cat(&xs, 0)?, &t, &input)
            });
            inner.metrics.batches.inc();
            inner.metrics.batch_size.observe(rows as f64);
            inner
                .metrics
                .inference_duration
                .observe(started.elapsed().as_secs_f64());
            let y = match stepped {
                Ok(y) => y,
                Err(e) => {
                    answer(group.into_iter().map(|r| r.job).collect(), Err(e), per);
                    continue;
                }
            };
            let mut off = 0;
            for mut r in group {
                let n = r.job.n();
                r.x = match y.narrow(0, off, n) {
                    Ok(x) => x,
                    Err(e) => {
                        answer(vec![r.job], Err(e.into()), per);
                        off += n;
                        continue;
                    }
                };
                off += n;
                r.t += 1;
                if r.t < steps {
                    running.push(r);
                    continue;
                }
                let images = guarded(inner, || {
                    Ok(s.finish(&r.x, &r.job.input)?
                        .flatten_all()?
                        .to_vec1::<f32>()?)
                });
                inner.metrics.images_generated.inc_by(n as u64);
                answer(vec![r.job], images, per);
            }
        }
    }
}
