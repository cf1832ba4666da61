//! Batching: samples → decoded, augmented views as tensors, with labels and metadata.

use super::decode::{sample_views, views_in};
use super::prefetch::Loader;
use super::LoaderError;
use candle_core::{Device, Tensor};
use genrep_wire::SampleMeta;

/// A decoded batch: `views[v]` is [B, C, H, W] in [0, 1]; `labels` from `cls` when present.
pub struct Batch {
    pub views: Vec<Tensor>,
    pub labels: Option<Vec<u32>>,
    pub keys: Vec<String>,
    pub meta: Vec<Option<SampleMeta>>,
}

/// Reads `batch` samples and decodes them into a [`Batch`] of `views` views (0: as many as the
/// first sample offers, see [`views_in`]), applying `augment` (with per-view seeds from `seed`,
/// `step`) when given.
pub fn next_batch(
    loader: &mut Loader,
    batch: usize,
    views: usize,
    augment: Option<&crate::augment::Augment>,
    seed: u64,
    step: u64,
    device: &Device,
) -> Result<Batch, LoaderError> {
    let mut views = views;
    let mut per_view: Vec<Vec<f32>> = Vec::new();
    let mut labels = Vec::new();
    let mut keys = Vec::new();
    let mut meta = Vec::new();
    let mut shape = None;
    for b in 0..batch {
        let s = loader.next_sample()?;
        let err = |m: String| LoaderError::Sample("batch".into(), s.key.clone(), m);
        if views == 0 {
            views = views_in(&s);
        }
        if per_view.is_empty() {
            per_view = vec![Vec::new(); views];
        }
        let vs = sample_views(&s, views).map_err(err)?;
        for (v, (mut px, c, h, w)) in vs.into_iter().enumerate() {
            match shape {
                None => shape = Some((c, h, w)),
                Some(sh) if sh != (c, h, w) => {
                    return Err(err(format!(
                        "image shape {:?} differs from {:?}",
                        (c, h, w),
                        sh
                    )))
                }
                _ => {}
            }
            if let Some(a) = augment {
                a.apply(
                    &mut px,
                    c,
                    h,
                    w,
                    &mut crate::augment::view_rng(seed, step, b as u64, v as u64),
                );
            }
            per_view[v].extend_from_slice(&px);
        }
        if let Some(c) = s.fields.get(genrep_wire::CLS_FIELD) {
            labels.push(
                std::str::from_utf8(c)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .ok_or_else(|| err("`cls` is not an integer".into()))?,
            );
        }
        meta.push(
            s.fields
                .get(genrep_wire::JSON_FIELD)
                .and_then(|j| serde_json::from_slice::<SampleMeta>(j).ok()),
        );
        keys.push(s.key.clone());
    }
    let (c, h, w) = shape.unwrap_or((1, 1, 1));
    let views = per_view
        .into_iter()
        .map(|v| Tensor::from_vec(v, (batch, c, h, w), device))
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(|e| LoaderError::Io("tensor".into(), e.to_string()))?;
    let labels = (labels.len() == batch).then_some(labels);
    Ok(Batch {
        views,
        labels,
        keys,
        meta,
    })
}
