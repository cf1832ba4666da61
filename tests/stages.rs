//! The staged generator interface through the engine: a generator with a z → w mapping stage
//! (views made in w, with an offset from a view method that reads the generator's assets),
//! and a stepped generator whose jobs join a running batch between steps and whose noise comes
//! from each row's own stream, whatever batch it ran in.

use candle_core::{DType, Device, Tensor};
use genrep::engine::{Consumer, EngineConfig, Health};
use genrep::generator::{
    Assets, Batch, ClassInput, Generator, GeneratorSpec, Knobs, LatentSpace, ModelInfo, NoiseKey,
    Space, Stepped,
};
use genrep::params::{Limits, SampleRequest};
use genrep::pipeline::Pipeline;
use genrep::sampler::rng::SampleRng;
use genrep::sampler::SamplerSettings;
use genrep::views::{sample_with, View, ViewContext, ViewMethod};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config(max_batch_size: usize) -> EngineConfig {
    EngineConfig {
        max_batch_size,
        max_batch_wait: Duration::from_millis(1),
        max_queue: 64,
        encode_threads: 1,
    }
}

fn info(spec: GeneratorSpec, assets: Assets) -> ModelInfo {
    ModelInfo {
        spec,
        device: Device::Cpu,
        dtype: DType::F32,
        assets: Arc::new(assets),
    }
}

/// Images are the latents themselves (`channels = dim`, 1×1 pixels); the mapping stage is
/// `w = 2z + 1`.
struct Mapped(ModelInfo);

impl Mapped {
    fn new(dim: usize) -> Self {
        let mut spec = GeneratorSpec::new("mapped", "test-mapped", dim, 0, dim, 1);
        spec.spaces.push(LatentSpace {
            space: Space::W,
            dim,
        });
        let mut assets = Assets::default();
        assets.insert(
            "walk",
            vec![dim],
            (0..dim).map(|i| i as f32 - 1.0).collect(),
        );
        Self(info(spec, assets))
    }
}

impl Generator for Mapped {
    fn info(&self) -> &ModelInfo {
        &self.0
    }
    fn map(
        &self,
        z: &Tensor,
        _: &ClassInput,
        _: &Knobs,
        space: Space,
    ) -> genrep::generator::Result<Tensor> {
        assert_eq!(space, Space::W);
        Ok(((z * 2.0)? + 1.0)?)
    }
    fn synthesize(
        &self,
        x: &Tensor,
        _: Space,
        _: &ClassInput,
        _: &Knobs,
        _: &[NoiseKey],
    ) -> genrep::generator::Result<Tensor> {
        let (b, d) = x.dims2()?;
        Ok(x.reshape((b, d, 1, 1))?)
    }
}

/// A view method in w that walks along the generator's `walk` asset by α ∈ [0, 1) drawn from
/// positive k's stream.
struct Walk;

impl ViewMethod for Walk {
    fn space(&self) -> Space {
        Space::W
    }
    fn positive(
        &self,
        cx: &ViewContext,
        _: &SamplerSettings,
        anchor: &[f32],
        r: &mut SampleRng,
    ) -> View {
        let (_, dir) = cx.assets.get("walk").unwrap();
        let alpha = r.uniform() as f32;
        View {
            z: anchor.to_vec(),
            offset: Some(dir.iter().map(|d| alpha * d).collect()),
            alphas: None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_in_w_go_through_the_mapping_stage_and_use_the_generators_assets() {
    let dim = 3;
    let p = Pipeline::start(Box::new(Mapped::new(dim)), config(8), Default::default());
    p.engine().wait_ready().await.unwrap();
    let spec = p.spec().clone();
    let req =
        SampleRequest::parse(|k| (k == "views").then_some("2"), &spec, &Limits::default()).unwrap();
    let c = Consumer::new("t", "t", 1);
    let l = sample_with(&Walk, &req.settings, &p.view_context(), req.seed, 7);
    let rx = p.engine().try_submit(&c, p.sample_job(&req, &l)).unwrap();
    let images = rx.await.unwrap().unwrap();
    let w: Vec<f32> = l.z_anchor.iter().map(|z| 2.0 * z + 1.0).collect();
    assert_eq!(&images[..dim], &w[..], "the anchor is the mapped point");
    for (k, off) in l.offsets.as_ref().unwrap().iter().enumerate() {
        let want: Vec<f32> = w.iter().zip(off).map(|(a, o)| a + o).collect();
        assert_eq!(
            &images[(k + 1) * dim..(k + 2) * dim],
            &want[..],
            "positive {k}"
        );
        // The offset is the asset scaled by this positive's own α.
        let alpha = off[0] / -1.0;
        assert_eq!(off, &vec![-alpha, 0.0, alpha]);
    }
    // The built-in methods stay in z: no mapping.
    let l = p.latents(&req, 7);
    let rx = p.engine().try_submit(&c, p.sample_job(&req, &l)).unwrap();
    let images = rx.await.unwrap().unwrap();
    let rows: Vec<f32> = l.rows().flatten().copied().collect();
    assert_eq!(&images[..], &rows[..]);
    // A w-space job and a z-space job are never one forward pass.
    let zb = Batch::from_z(vec![0.0; dim], dim, ClassInput::None, Knobs::default(), 0);
    assert!(!p
        .sample_job(
            &req,
            &sample_with(&Walk, &req.settings, &p.view_context(), 0, 0)
        )
        .compatible(&zb));
}

/// `x ← x + 1 + ε_t / 1000` for `STEPS` steps, `ε_t` from the row's noise stream `t`; every
/// step call's step indices are logged, and each call takes a few milliseconds.
struct Counter {
    info: ModelInfo,
    log: Arc<Mutex<Vec<Vec<usize>>>>,
}

const STEPS: usize = 30;

impl Counter {
    fn delta(key: &NoiseKey, t: usize) -> f32 {
        1.0 + key.normals(t as u32, 1)[0] / 1000.0
    }
}

impl Generator for Counter {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn synthesize(
        &self,
        _: &Tensor,
        _: Space,
        _: &ClassInput,
        _: &Knobs,
        _: &[NoiseKey],
    ) -> genrep::generator::Result<Tensor> {
        unreachable!("a stepped generator runs through its steps")
    }
    fn stepped(&self) -> Option<&dyn Stepped> {
        Some(self)
    }
}

impl Stepped for Counter {
    fn steps(&self) -> usize {
        STEPS
    }
    fn begin(&self, b: &Batch) -> genrep::generator::Result<Tensor> {
        Ok(Tensor::from_slice(
            &b.latents.z,
            (b.len(), 1),
            &Device::Cpu,
        )?)
    }
    fn step(&self, x: &Tensor, t: &[usize], b: &Batch) -> genrep::generator::Result<Tensor> {
        self.log.lock().unwrap().push(t.to_vec());
        std::thread::sleep(Duration::from_millis(3));
        let d: Vec<f32> = b
            .noise
            .iter()
            .zip(t)
            .map(|(k, &t)| Counter::delta(k, t))
            .collect();
        Ok((x + Tensor::from_vec(d, (b.len(), 1), &Device::Cpu)?)?)
    }
    fn finish(&self, x: &Tensor, _: &Batch) -> genrep::generator::Result<Tensor> {
        let n = x.dim(0)?;
        Ok(x.reshape((n, 1, 1, 1))?)
    }
}

/// What `Counter` gives for one row run alone, step by step.
fn expected(z: f32, key: &NoiseKey) -> f32 {
    let mut x = z;
    for t in 0..STEPS {
        x += Counter::delta(key, t);
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepped_jobs_join_between_steps_and_keep_their_own_noise() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut spec = GeneratorSpec::new("counter", "test-stepped", 1, 0, 1, 1);
    spec.steps = Some(STEPS);
    let g = Counter {
        info: info(spec, Assets::default()),
        log: log.clone(),
    };
    let e = genrep::engine::Engine::start(Box::new(g), config(8), Default::default());
    // The warm-up runs every step of a full batch (30 steps of 3 ms at least): warming up, then
    // ready, one state on one channel.
    assert_eq!(e.health(), Health::WarmingUp);
    e.wait_ready().await.unwrap();
    assert_eq!(e.health(), Health::Ready);
    log.lock().unwrap().clear();
    let c = Consumer::new("t", "t", 1);
    let job =
        |z: f32, seed: u64| Batch::from_z(vec![z], 1, ClassInput::None, Knobs::default(), seed);
    let a = e.try_submit(&c, job(0.0, 1)).unwrap();
    // B arrives while A is part-way through its steps.
    tokio::time::timeout(Duration::from_secs(10), async {
        while log.lock().unwrap().len() < 5 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("A never started stepping");
    let b = e.try_submit(&c, job(100.0, 2)).unwrap();
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    // Each row's result is what it gives alone: its noise came from its own stream.
    assert_eq!(a[0], expected(0.0, &NoiseKey::explicit(1, 1)[0]));
    assert_eq!(b[0], expected(100.0, &NoiseKey::explicit(2, 1)[0]));
    let log = log.lock().unwrap();
    // B joined A's running batch: one call held A at a later step and B at step 0 ...
    assert!(
        log.iter().any(|t| t.len() == 2 && t[0] >= 5 && t[1] == 0),
        "{log:?}"
    );
    // ... and shared A's passes until A left: fewer calls than two runs one after the other.
    assert!(log.len() < 2 * STEPS, "{} calls", log.len());
    assert_eq!(log.iter().map(Vec::len).sum::<usize>(), 2 * STEPS);
}
