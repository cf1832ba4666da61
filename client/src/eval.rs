//! Evaluation of frozen encoder features: kNN top-1 (cosine, similarity-weighted vote) and a
//! linear probe (multinomial logistic regression trained on labelled features).

use crate::loss::l2_normalize;
use crate::model::Encoder;
use crate::optim::{Optimizer, Param, Rule};
use candle_core::{DType, Device, Result, Tensor, Var, D};

/// Features [N, F] of images [N, C, H, W] (eval-mode BN), computed in chunks and detached from
/// the encoder's graph: evaluation treats the encoder as frozen, and a graph kept alive here would
/// hold every chunk's activations and make a probe's backward pass run through the encoder.
pub fn features(enc: &Encoder, images: &Tensor, chunk: usize) -> Result<Tensor> {
    let n = images.dim(0)?;
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let m = chunk.min(n - i);
        out.push(enc.features(&images.narrow(0, i, m)?, false)?.detach());
        i += m;
    }
    Tensor::cat(&out, 0)
}

/// kNN top-1 of an encoder's features: `train` is the memory, `test` the queries (the monitor
/// during training and `genrep-train eval` both use it).
pub fn knn_eval(
    enc: &Encoder,
    train: &(Tensor, Vec<u32>),
    test: &(Tensor, Vec<u32>),
    k: usize,
) -> Result<f32> {
    let ftr = features(enc, &train.0, 500)?;
    let fte = features(enc, &test.0, 500)?;
    knn_top1(
        &ftr,
        &train.1,
        &fte,
        &test.1,
        k,
        num_classes(&train.1, &test.1),
    )
}

/// Classes in labelled sets: one past the largest label.
pub fn num_classes(train_y: &[u32], test_y: &[u32]) -> usize {
    train_y
        .iter()
        .chain(test_y)
        .max()
        .map_or(1, |m| *m as usize + 1)
}

/// kNN top-1 accuracy: each test feature votes among its `k` most cosine-similar train features,
/// weighted by `exp(sim / 0.07)`.
pub fn knn_top1(
    train: &Tensor,
    train_y: &[u32],
    test: &Tensor,
    test_y: &[u32],
    k: usize,
    classes: usize,
) -> Result<f32> {
    if k == 0 {
        candle_core::bail!("kNN needs k >= 1 neighbours (got k = 0)");
    }
    if train_y.is_empty() || test_y.is_empty() {
        candle_core::bail!("kNN needs labelled train and test samples");
    }
    let a = l2_normalize(train)?;
    let b = l2_normalize(test)?;
    let sim = b.matmul(&a.t()?)?.to_vec2::<f32>()?;
    let mut correct = 0;
    for (row, &y) in sim.iter().zip(test_y) {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&i, &j| row[j].total_cmp(&row[i]));
        let mut votes = vec![0f32; classes];
        for &i in &idx[..k] {
            votes[train_y[i] as usize] += (row[i] / 0.07).exp();
        }
        let pred = votes
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(c, _)| c)
            .unwrap();
        correct += usize::from(pred as u32 == y);
    }
    Ok(correct as f32 / test_y.len() as f32)
}

/// Linear probe top-1: standardised features, softmax regression trained full-batch with SGD
/// (momentum 0.9, weight decay 1e-4, cosine lr from `lr`) for at most `max_steps` steps, stopping
/// early once converged (the training loss improved by less than 0.01 % over the last 50 steps):
/// a probe that stops short measures its optimiser, not the features.
pub fn linear_probe(
    train: &Tensor,
    train_y: &[u32],
    test: &Tensor,
    test_y: &[u32],
    classes: usize,
    max_steps: usize,
    lr: f64,
) -> Result<f32> {
    let dev = train.device().clone();
    let mean = train.mean_keepdim(0)?;
    let std = (train.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)? + 1e-6)?.sqrt()?;
    let norm = |x: &Tensor| x.broadcast_sub(&mean)?.broadcast_div(&std);
    let (xtr, xte) = (norm(train)?, norm(test)?);
    let f = xtr.dim(1)?;
    let w = Var::from_tensor(&Tensor::zeros((f, classes), DType::F32, &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros(classes, DType::F32, &dev)?)?;
    let y = Tensor::from_vec(train_y.to_vec(), train_y.len(), &dev)?;
    let mut opt = Optimizer::new(
        vec![Param::new(w.clone(), true), Param::new(b.clone(), false)],
        Rule::Sgd,
        0.9,
        1e-4,
    );
    let mut checkpoint_loss = f32::INFINITY;
    for e in 0..max_steps {
        let logits = xtr.matmul(w.as_tensor())?.broadcast_add(b.as_tensor())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        if e % 50 == 49 {
            let l = loss.to_scalar::<f32>()?;
            if (checkpoint_loss - l) < 1e-4 * checkpoint_loss.abs() {
                break;
            }
            checkpoint_loss = l;
        }
        let lr_e = crate::optim::warmup_cosine(e, max_steps, 0, lr);
        opt.step(&loss.backward()?, lr_e)?;
    }
    let pred = xte
        .matmul(w.as_tensor())?
        .broadcast_add(b.as_tensor())?
        .argmax(D::Minus1)?
        .to_vec1::<u32>()?;
    Ok(pred.iter().zip(test_y).filter(|(p, y)| p == y).count() as f32 / test_y.len() as f32)
}

/// Raw pixels as features `[N, C·H·W]`: the reference row a learned encoder must beat.
pub fn pixel_features(images: &Tensor) -> Result<Tensor> {
    images.flatten_from(1)
}

/// Images and labels of a labelled source, loaded whole (evaluation sets are small).
pub fn load_labelled(source: &str, device: &Device) -> anyhow::Result<(Tensor, Vec<u32>)> {
    load_labelled_with(source, device, &crate::loader::FetchPolicy::default())
}

/// [`load_labelled`] with a given network policy.
pub fn load_labelled_with(
    source: &str,
    device: &Device,
    policy: &crate::loader::FetchPolicy,
) -> anyhow::Result<(Tensor, Vec<u32>)> {
    let shards = crate::loader::resolve(source)?;
    let mut imgs = Vec::new();
    let mut labels = Vec::new();
    let mut shape = None;
    for s in &shards {
        for sample in crate::loader::fetch(s, policy)? {
            let (px, c, h, w) = crate::loader::sample_views(&sample, 1)
                .map_err(|e| anyhow::anyhow!("{s}: {}: {e}", sample.key))?
                .remove(0);
            shape.get_or_insert((c, h, w));
            let cls = sample
                .fields
                .get(genrep_wire::CLS_FIELD)
                .and_then(|c| std::str::from_utf8(c).ok()?.trim().parse::<u32>().ok())
                .ok_or_else(|| {
                    anyhow::anyhow!("{s}: sample {} has no integer `cls` label", sample.key)
                })?;
            imgs.extend_from_slice(&px);
            labels.push(cls);
        }
    }
    let (c, h, w) = shape.ok_or_else(|| anyhow::anyhow!("{source}: no samples"))?;
    Ok((
        Tensor::from_vec(imgs, (labels.len(), c, h, w), device)?,
        labels,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_detached_from_the_encoder() {
        let cfg = crate::model::EncoderConfig {
            in_channels: 1,
            width: 4,
            depth: 1,
            stages: 2,
            proj_dim: 8,
        };
        let (enc, _vm) = crate::model::build(cfg, &Device::Cpu).unwrap();
        let x = Tensor::rand(0f32, 1f32, (5, 1, 8, 8), &Device::Cpu).unwrap();
        let f = features(&enc, &x, 2).unwrap();
        assert_eq!(f.dims(), &[5, 8]);
        // No graph: nothing upstream of the features takes part in a later backward pass.
        assert!(!f.track_op());
    }

    #[test]
    fn knn_rejects_k_zero() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let e = knn_top1(&t, &[0, 1], &t, &[0, 1], 0, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k >= 1"), "{e}");
    }

    #[test]
    fn knn_and_probe_on_separable_points() {
        let dev = Device::Cpu;
        let tr = Tensor::new(&[[1f32, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.8]], &dev).unwrap();
        let te = Tensor::new(&[[1f32, 0.2], [0.2, 1.0]], &dev).unwrap();
        assert_eq!(
            knn_top1(&tr, &[0, 0, 1, 1], &te, &[0, 1], 2, 2).unwrap(),
            1.0
        );
        assert_eq!(
            linear_probe(&tr, &[0, 0, 1, 1], &te, &[0, 1], 2, 50, 0.5).unwrap(),
            1.0
        );
    }
}
