//! The pipeline: what a request asks for → jobs on the engine → encoded bytes (in the style of
//! TEI's `Infer`). The routes and `genrep export` call it; it builds each job's typed latents
//! from the sampler and the view method, encodes on its own pool while the device runs the
//! next batch, and counts what it produces. The engine below it only queues, batches and runs
//! jobs.

mod stream;

pub use stream::StreamEnd;

use crate::engine::{Consumer, Engine, EngineConfig, EngineError, JobOutput};
use crate::format::image::{grid, grid_of, Image8};
use crate::format::npy;
use crate::generator::{
    Assets, Batch, ClassInput, Generator, GeneratorSpec, Knobs, Latents, NoiseKey,
};
use crate::metrics::Metrics;
use crate::params::SampleRequest;
use crate::views::{SampleLatents, ViewContext};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::{oneshot, Semaphore};

/// Images of one job: `[n, C, H, W]` f32 flattened.
pub type Images = Arc<Vec<f32>>;

/// Explicit latents for `POST /v1/generate` and similar callers, already checked against the
/// generator (see [`crate::generator::inputs`]).
#[derive(Debug, Clone)]
pub struct ExplicitInput {
    /// The space of `rows`: z, or w rows given directly.
    pub space: crate::generator::Space,
    /// `[n, dim(space)]` row-major.
    pub rows: Vec<f32>,
    pub classes: ClassInput,
    pub knobs: Knobs,
    /// Seed of the generator-internal noise (namespace `generate`, row = index).
    pub noise_seed: u64,
}

/// How `POST /v1/generate` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateFormat {
    /// A grid, 8 images per row.
    Png,
    /// `[B, C, H, W]` float32.
    Npy,
    /// One PNG (and `cls`) per image.
    Tar,
}

impl GenerateFormat {
    pub const ALL: [&'static str; 3] = ["png", "npy", "tar"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "png" => Some(Self::Png),
            "npy" => Some(Self::Npy),
            "tar" => Some(Self::Tar),
            _ => None,
        }
    }
}

/// The façade over the engine; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    engine: Engine,
    assets: Arc<Assets>,
    /// Encoders running at once (PNG/JPEG/tar), next to the device thread.
    encode_slots: Arc<Semaphore>,
}

impl Pipeline {
    /// Starts the engine for `generator` (see [`Engine::start`]).
    pub fn start(generator: Box<dyn Generator>, cfg: EngineConfig, metrics: Arc<Metrics>) -> Self {
        let assets = generator.info().assets.clone();
        let encode_slots = Arc::new(Semaphore::new(cfg.encode_threads.max(1)));
        Self {
            engine: Engine::start(generator, cfg, metrics),
            assets,
            encode_slots,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn spec(&self) -> &GeneratorSpec {
        self.engine.spec()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        self.engine.metrics()
    }

    /// What view methods may use.
    pub fn view_context(&self) -> ViewContext<'_> {
        ViewContext::of(self.spec(), &self.assets)
    }

    /// The latents of sample `index`.
    pub fn latents(&self, req: &SampleRequest, index: u64) -> SampleLatents {
        req.latents(&self.view_context(), index)
    }

    /// The `json` member of sample `index`, without generating it.
    pub fn meta(&self, req: &SampleRequest, index: u64) -> genrep_wire::SampleMeta {
        req.meta(self.spec(), &self.latents(req, index))
    }

    /// The job of one sample: anchor then positives, same class, the request's knobs, each
    /// view's noise from the sample's own streams.
    pub fn sample_job(&self, req: &SampleRequest, l: &SampleLatents) -> Batch {
        let n = 1 + l.z_pos.len();
        let rows: Vec<f32> = l.rows().flatten().copied().collect();
        let offset = l.offsets.as_ref().map(|offs| {
            let d = offs.first().map_or(0, Vec::len);
            // The anchor is the mapped point itself.
            let mut all = vec![0.0; d];
            all.extend(offs.iter().flatten());
            all
        });
        let ns = Arc::new(req.settings.namespace.clone());
        Batch {
            latents: Latents {
                space: l.space,
                z: rows,
                offset,
            },
            classes: match l.class {
                Some(c) => ClassInput::Ids(vec![c; n]),
                None => ClassInput::None,
            },
            knobs: req.knobs.clone(),
            noise: (0..n as u32)
                .map(|view| NoiseKey {
                    namespace: ns.clone(),
                    seed: req.seed,
                    index: l.index,
                    view,
                })
                .collect(),
        }
    }

    /// The job of explicit latents.
    pub fn explicit_job(&self, input: ExplicitInput) -> Batch {
        let spec = self.spec();
        let d = spec.dim(input.space).unwrap_or(spec.latent_dim);
        let mut b = Batch::from_z(input.rows, d, input.classes, input.knobs, input.noise_seed);
        if input.space != crate::generator::Space::Z {
            b.latents = Latents::given(input.space, std::mem::take(&mut b.latents.z));
        }
        b
    }

    /// Runs blocking work (encoding, JSON parsing) off the async threads on the encode pool.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let _slot = self
            .encode_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| EngineError::Internal(format!("a blocking task failed: {e}")))
    }

    /// The images of one sample (queued as an interactive job, or refused at once).
    pub async fn sample_images(
        &self,
        consumer: &Consumer,
        req: &SampleRequest,
        index: u64,
    ) -> Result<Images, EngineError> {
        let l = self.latents(req, index);
        images(self.engine.try_submit(consumer, self.sample_job(req, &l))?).await
    }

    /// `/v1/samples/{index}.png`: a sample's views side by side.
    pub async fn sample_png(
        &self,
        consumer: &Consumer,
        req: &SampleRequest,
        index: u64,
    ) -> Result<Vec<u8>, EngineError> {
        let images = self.sample_images(consumer, req, index).await?;
        let spec = self.spec().clone();
        self.blocking(move || grid(&[image_rows(&spec, &images)], 2).to_png())
            .await
    }

    /// `/v1/grid.png`: samples `start..start + rows`, one row each. The rows are queued
    /// together (or none of them), before any is awaited, so they can share a forward pass.
    pub async fn grid_png(
        &self,
        consumer: &Consumer,
        req: &SampleRequest,
        start: u64,
        rows: u64,
    ) -> Result<Vec<u8>, EngineError> {
        let jobs = (start..start + rows)
            .map(|i| self.sample_job(req, &self.latents(req, i)))
            .collect();
        self.grid_of_jobs(consumer, jobs).await
    }

    /// One grid row per job, the jobs queued together (or none of them) before any is
    /// awaited, so they can share a forward pass.
    async fn grid_of_jobs(
        &self,
        consumer: &Consumer,
        jobs: Vec<Batch>,
    ) -> Result<Vec<u8>, EngineError> {
        let pending = self.engine.try_submit_all(consumer, jobs)?;
        let mut all = Vec::with_capacity(pending.len());
        for rx in pending {
            all.push(images(rx).await?);
        }
        let spec = self.spec().clone();
        self.blocking(move || {
            let rows: Vec<Vec<Image8>> = all.iter().map(|imgs| image_rows(&spec, imgs)).collect();
            grid(&rows, 2).to_png()
        })
        .await
    }

    /// The job of one row of `/v1/walks.png`: sample `index`'s anchor moved by each of
    /// `alphas` along walk `walk` of the served set, its class and the anchor's own noise in
    /// every column (only the walk changes along a row).
    pub fn walk_job(&self, req: &SampleRequest, index: u64, walk: usize, alphas: &[f32]) -> Batch {
        let spec = self.spec();
        let s = &req.settings;
        let anchor = crate::sampler::draw_anchor(s, spec.latent_dim, req.seed, index);
        let set = spec.walks.as_ref().expect("the route checks the walks");
        let dir = crate::walks::set::vectors(set, &self.assets)[walk];
        let rows: Vec<f32> = alphas
            .iter()
            .flat_map(|&a| {
                anchor
                    .iter()
                    .zip(dir)
                    .map(move |(&z, &w)| (z as f64 + a as f64 * w as f64) as f32)
            })
            .collect();
        let n = alphas.len();
        let ns = Arc::new(s.namespace.clone());
        Batch {
            latents: Latents {
                space: crate::generator::Space::Z,
                z: rows,
                offset: None,
            },
            classes: match crate::sampler::draw_class(s, req.seed, index) {
                Some(c) => ClassInput::Ids(vec![c; n]),
                None => ClassInput::None,
            },
            knobs: req.knobs.clone(),
            noise: (0..n)
                .map(|_| NoiseKey {
                    namespace: ns.clone(),
                    seed: req.seed,
                    index,
                    view: 0,
                })
                .collect(),
        }
    }

    /// `/v1/walks.png`: samples `start..start + rows` moved along walk `walk`, one row each,
    /// one column per coefficient. Queued together, like [`Self::grid_png`].
    pub async fn walks_png(
        &self,
        consumer: &Consumer,
        req: &SampleRequest,
        walk: usize,
        alphas: &[f32],
        start: u64,
        rows: u64,
    ) -> Result<Vec<u8>, EngineError> {
        let jobs = (start..start + rows)
            .map(|i| self.walk_job(req, i, walk, alphas))
            .collect();
        self.grid_of_jobs(consumer, jobs).await
    }

    /// `POST /v1/generate`: explicit latents → encoded images.
    pub async fn generate(
        &self,
        consumer: &Consumer,
        input: ExplicitInput,
        format: GenerateFormat,
    ) -> Result<Bytes, EngineError> {
        let n = input.rows.len() / self.spec().dim(input.space).unwrap_or(1).max(1);
        let ids = match &input.classes {
            ClassInput::Ids(v) => Some(v.clone()),
            _ => None,
        };
        let images = images(self.engine.try_submit(consumer, self.explicit_job(input))?).await?;
        let spec = self.spec().clone();
        self.blocking(move || {
            let (c, h, w) = (spec.channels, spec.height, spec.width);
            Bytes::from(match format {
                GenerateFormat::Npy => npy::write_f32(&[n, c, h, w], &images),
                GenerateFormat::Tar => {
                    let mut out = Vec::new();
                    for (i, img) in image_rows(&spec, &images).into_iter().enumerate() {
                        let cls = ids.as_ref().map(|ids| ids[i]);
                        out.extend_from_slice(&crate::wds::image_sample(
                            &genrep_wire::image_key(i as u64),
                            img.to_png(),
                            cls,
                        ));
                    }
                    out.extend_from_slice(&crate::wds::TAR_END);
                    out
                }
                GenerateFormat::Png => grid_of(&image_rows(&spec, &images), 8, 2).to_png(),
            })
        })
        .await
    }

    /// Generates and encodes one sample of a stream: queue (waiting for room) → device →
    /// encode pool. Returns the task producing its tar bytes.
    pub(crate) async fn start_sample(
        &self,
        consumer: &Consumer,
        req: &Arc<SampleRequest>,
        index: u64,
    ) -> tokio_util::task::AbortOnDropHandle<Result<Bytes, EngineError>> {
        let l = self.latents(req, index);
        let rx = self.engine.submit(consumer, self.sample_job(req, &l)).await;
        let (me, req) = (self.clone(), req.clone());
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let images = images(rx).await?;
            let spec = me.spec().clone();
            let metrics = me.metrics().clone();
            me.blocking(move || {
                let t = std::time::Instant::now();
                let b = crate::wds::encode_sample(&spec, &req, &l, &images);
                metrics.encode_duration.observe(t.elapsed().as_secs_f64());
                b
            })
            .await
        }))
    }

    /// [`Self::stream`] on its own task, never cut short by a shutdown (export, checks).
    pub fn spawn_stream(
        &self,
        consumer: Consumer,
        req: Arc<SampleRequest>,
        start: u64,
        end: StreamEnd,
        tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let never = tokio_util::sync::CancellationToken::new();
            me.stream(consumer, req, start, end, tx, never).await
        })
    }

    /// Produces samples `start..` of `req` as tar chunks into `tx` (see [`stream::produce`]).
    pub async fn stream(
        &self,
        consumer: Consumer,
        req: Arc<SampleRequest>,
        start: u64,
        end: StreamEnd,
        tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        stream::produce(self.clone(), consumer, req, start, end, tx, shutdown).await
    }
}

/// Waits for a job's images.
async fn images(rx: oneshot::Receiver<JobOutput>) -> Result<Images, EngineError> {
    rx.await.map_err(|_| EngineError::ShuttingDown)?
}

/// One job's images as 8-bit images.
fn image_rows(spec: &GeneratorSpec, images: &[f32]) -> Vec<Image8> {
    let (c, h, w) = (spec.channels, spec.height, spec.width);
    images
        .chunks_exact(spec.image_len())
        .map(|x| Image8::from_chw(x, c, h, w))
        .collect()
}
