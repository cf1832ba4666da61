//! Whether walks do what they are named for, measured: each walk moves a few hundred anchors
//! through `steps` coefficients of its range, and one image statistic per transform is
//! averaged per coefficient — for the walk's images, and for the pixel edit it was trained to
//! imitate applied to the anchors' images. A working walk changes its statistic monotonically
//! (Spearman's ρ between coefficient and mean near ±1) and in the edit's direction.
//!
//! Statistics, on ink weights `(x + 1) / 2` (channels averaged; pixels an edit brings in from
//! outside the frame weigh 0):
//! - zoom: radius of gyration about the ink centroid (px);
//! - shift_x / shift_y: the ink centroid's x / y (px; +x right, +y down);
//! - rot2d: the change of the ink's principal-axis angle from the anchor's (degrees);
//! - color_c: the mean value of channel c.

use super::edits::{self, Edit};
use super::set::{vectors, WalkSet};
use super::train::Transform;
use crate::generator::{ClassInput, Generator, Knobs};
use crate::sampler::rng::{Namespace, SampleRng};
use anyhow::{anyhow, Result};

/// One walk's measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalkEffect {
    pub walk: String,
    /// What is measured (see the module doc).
    pub statistic: &'static str,
    pub alphas: Vec<f32>,
    /// The statistic's mean over the anchors at each coefficient: the walk's images.
    pub walk_means: Vec<f64>,
    /// The same for the pixel edit of the anchors' images.
    pub edit_means: Vec<f64>,
    /// Spearman's ρ between the coefficients and `walk_means`.
    pub spearman: f64,
    /// The same for `edit_means` (±1 unless the edit saturates).
    pub edit_spearman: f64,
    /// Least-squares slope of `walk_means` per unit coefficient.
    pub slope: f64,
    /// The training loss of this walk alone, on these anchors: the masked MSE between the walk's
    /// images and the edits, averaged over the coefficients.
    pub loss: f64,
    /// The same loss for a walk that does nothing (the anchors' own images against the edits):
    /// what `loss` improves on.
    pub loss_without_walk: f64,
    /// The same for `edit_means`.
    pub edit_slope: f64,
}

/// The statistic measured for a transform.
pub fn statistic(t: Transform) -> &'static str {
    match t {
        Transform::Zoom => "radius of gyration (px)",
        Transform::ShiftX => "ink centroid x (px)",
        Transform::ShiftY => "ink centroid y (px)",
        Transform::Rot2d => "principal-axis angle change (deg)",
        Transform::Color => "mean channel value",
    }
}

/// Ink moments of one `[C, H, W]` image: (mass, centroid x, centroid y, cov xx, yy, xy).
fn moments(img: &[f32], mask: Option<&[f32]>, c: usize, h: usize, w: usize) -> [f64; 6] {
    let mut m = [0f64; 6];
    let mut ink = vec![0f64; h * w];
    for (p, v) in ink.iter_mut().enumerate() {
        let on = mask.map_or(1.0, |m| m[p] as f64);
        let s: f64 = (0..c).map(|ch| img[ch * h * w + p] as f64).sum::<f64>() / c as f64;
        *v = on * ((s + 1.0) / 2.0).clamp(0.0, 1.0);
    }
    for y in 0..h {
        for x in 0..w {
            let v = ink[y * w + x];
            m[0] += v;
            m[1] += v * x as f64;
            m[2] += v * y as f64;
        }
    }
    if m[0] <= 0.0 {
        return m;
    }
    let (cx, cy) = (m[1] / m[0], m[2] / m[0]);
    for y in 0..h {
        for x in 0..w {
            let v = ink[y * w + x];
            let (dx, dy) = (x as f64 - cx, y as f64 - cy);
            m[3] += v * dx * dx;
            m[4] += v * dy * dy;
            m[5] += v * dx * dy;
        }
    }
    [m[0], cx, cy, m[3] / m[0], m[4] / m[0], m[5] / m[0]]
}

fn axis_angle_deg(m: &[f64; 6]) -> f64 {
    0.5 * (2.0 * m[5]).atan2(m[3] - m[4]).to_degrees()
}

/// The statistic of one image (`anchor`: the same image's moments at coefficient 0, for the
/// rotation's change).
fn stat(
    t: Transform,
    channel: usize,
    img: &[f32],
    m: &[f64; 6],
    anchor: &[f64; 6],
    hw: usize,
) -> f64 {
    match t {
        Transform::Zoom => (m[3] + m[4]).sqrt(),
        Transform::ShiftX => m[1],
        Transform::ShiftY => m[2],
        Transform::Rot2d => {
            // Axis angles are defined modulo 180°.
            let d = axis_angle_deg(m) - axis_angle_deg(anchor);
            (d + 90.0).rem_euclid(180.0) - 90.0
        }
        Transform::Color => {
            img[channel * hw..][..hw]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / hw as f64
        }
    }
}

/// Spearman's ρ of `y` against its position (the coefficients are increasing): Pearson's
/// correlation of the ranks, ties given their average rank; 0 when `y` is constant (a walk
/// that changes nothing is not monotone).
pub fn spearman(y: &[f64]) -> f64 {
    let n = y.len();
    if n < 2 {
        return f64::NAN;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| y[a].total_cmp(&y[b]));
    let mut rank = vec![0f64; n];
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && y[order[j + 1]] == y[order[i]] {
            j += 1;
        }
        for &o in &order[i..=j] {
            rank[o] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    let pos: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let mean = (n - 1) as f64 / 2.0;
    let cov: f64 = pos
        .iter()
        .zip(&rank)
        .map(|(p, r)| (p - mean) * (r - mean))
        .sum();
    let var_p: f64 = pos.iter().map(|p| (p - mean).powi(2)).sum();
    let var_r: f64 = rank.iter().map(|r| (r - mean).powi(2)).sum();
    if var_r == 0.0 {
        return 0.0;
    }
    cov / (var_p * var_r).sqrt()
}

fn slope(x: &[f32], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mx = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let sxy: f64 = x
        .iter()
        .zip(y)
        .map(|(&a, b)| (a as f64 - mx) * (b - my))
        .sum();
    let sxx: f64 = x.iter().map(|&a| (a as f64 - mx).powi(2)).sum();
    sxy / sxx
}

/// `Σ mask·(a − b)² / Σ mask` over `[B, C, H, W]` images with `[B, H, W]` masks (the
/// training loss, [`super::loss::masked_mse`], on host data).
fn masked_mse(a: &[f32], b: &[f32], mask: &[f32], c: usize, hw: usize) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (i, m) in mask.chunks_exact(hw).enumerate() {
        for ch in 0..c {
            let off = (i * c + ch) * hw;
            for (p, &mv) in m.iter().enumerate() {
                let d = (a[off + p] - b[off + p]) as f64;
                num += mv as f64 * d * d;
            }
        }
        den += m.iter().map(|&v| v as f64).sum::<f64>() * c as f64;
    }
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// The pixel edit a coefficient `a` of a walk stands for (the training's conventions).
fn edit_for(t: Transform, channel: usize, channels: usize, width: usize, a: f32) -> Edit {
    let mut e = Edit::identity();
    match t {
        Transform::Zoom => e.zoom = a.exp(),
        Transform::ShiftX => e.shift.0 = a * 100.0 * width as f32 / 256.0,
        Transform::ShiftY => e.shift.1 = a * 100.0 * width as f32 / 256.0,
        Transform::Rot2d => e.rot2d_deg = a * 30.0,
        Transform::Color => {
            e.colour = vec![0.0; channels];
            e.colour[channel] = a;
        }
    }
    e
}

/// Measures every walk of `set` on `g`: `anchors` anchors (truncated at ±2, random classes,
/// from `seed`), `steps` coefficients spanning each walk's range symmetrically about 0.
pub fn measure(
    g: &dyn Generator,
    set: &WalkSet,
    anchors: usize,
    steps: usize,
    seed: u64,
) -> Result<Vec<WalkEffect>> {
    anyhow::ensure!(
        anchors >= 1 && steps >= 2,
        "need at least 1 anchor and 2 steps"
    );
    let spec = g.spec().clone();
    let (d, c, h, w) = (spec.latent_dim, spec.channels, spec.height, spec.width);
    let hw = h * w;
    let mut rng = SampleRng::new(&Namespace::new("walks-measure"), seed, 0, 0);
    let z: Vec<f32> = (0..anchors * d)
        .map(|_| rng.truncated_normal(2.0) as f32)
        .collect();
    let classes = if spec.num_classes > 0 {
        ClassInput::Ids(
            (0..anchors)
                .map(|_| rng.below(spec.num_classes as u64) as u32)
                .collect(),
        )
    } else {
        ClassInput::None
    };
    let knobs = Knobs::default();
    // Chunks of 64 anchors: a large --anchors on a large generator must not be one batch.
    const CHUNK: usize = 64;
    let run = |z: &[f32]| -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(anchors * c * hw);
        for (k, rows) in z.chunks(CHUNK * d).enumerate() {
            let cls = match &classes {
                ClassInput::Ids(ids) => {
                    let n = rows.len() / d;
                    ClassInput::Ids(ids[k * CHUNK..k * CHUNK + n].to_vec())
                }
                other => other.clone(),
            };
            let t = g.generate(rows, &cls, &knobs)?;
            out.extend(t.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    };
    let base = run(&z)?;
    let base_m: Vec<[f64; 6]> = base
        .chunks_exact(c * hw)
        .map(|img| moments(img, None, c, h, w))
        .collect();
    let dirs = vectors(set, g.info().assets.as_ref());
    let mut out = Vec::new();
    for (wi, ws) in set.walks.iter().enumerate() {
        let t = ws.transform;
        let channel = ws
            .name
            .strip_prefix("color_")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let alphas = super::set::sweep(ws.alpha_range, steps, 1.0);
        let (mut walk_means, mut edit_means) = (Vec::new(), Vec::new());
        let (mut loss, mut loss0) = (0f64, 0f64);
        for &a in &alphas {
            let moved: Vec<f32> = z
                .chunks_exact(d)
                .flat_map(|row| {
                    row.iter()
                        .zip(dirs[wi])
                        .map(move |(&zj, &wj)| (zj as f64 + a as f64 * wj as f64) as f32)
                })
                .collect();
            let imgs = run(&moved)?;
            // Images without ink have no centroid or axis: they are left out of the mean.
            let mean = |imgs: &[f32], masks: Option<&[f32]>| -> f64 {
                let v: Vec<f64> = imgs
                    .chunks_exact(c * hw)
                    .enumerate()
                    .filter_map(|(i, img)| {
                        let mk = masks.map(|m| &m[i * hw..][..hw]);
                        let m = moments(img, mk, c, h, w);
                        let inked = m[0] > 0.0 && base_m[i][0] > 0.0;
                        (inked || t == Transform::Color)
                            .then(|| stat(t, channel, img, &m, &base_m[i], hw))
                    })
                    .collect();
                v.iter().sum::<f64>() / v.len() as f64
            };
            walk_means.push(mean(&imgs, None));
            let e = edit_for(t, channel, c, w, a);
            let (edited, mask) = edits::apply(&base, (anchors, c, h, w), &vec![e; anchors]);
            edit_means.push(mean(&edited, Some(&mask)));
            loss += masked_mse(&imgs, &edited, &mask, c, hw);
            loss0 += masked_mse(&base, &edited, &mask, c, hw);
        }
        let (loss, loss_without_walk) = (loss / steps as f64, loss0 / steps as f64);
        if walk_means.iter().any(|v| !v.is_finite()) {
            return Err(anyhow!("walk `{}`: the statistic is not finite", ws.name));
        }
        out.push(WalkEffect {
            walk: ws.name.clone(),
            statistic: statistic(t),
            spearman: spearman(&walk_means),
            edit_spearman: spearman(&edit_means),
            slope: slope(&alphas, &walk_means),
            loss,
            loss_without_walk,
            edit_slope: slope(&alphas, &edit_means),
            alphas,
            walk_means,
            edit_means,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_and_reversed() {
        assert_eq!(spearman(&[1.0, 2.0, 5.0, 9.0]), 1.0);
        assert_eq!(spearman(&[3.0, 2.0, 1.0]), -1.0);
        let r = spearman(&[1.0, 3.0, 2.0, 4.0]);
        assert!((r - 0.8).abs() < 1e-12, "{r}");
        // A walk that changes nothing is not monotone; ties share their rank.
        assert_eq!(spearman(&[2.0; 5]), 0.0);
        let t = spearman(&[1.0, 2.0, 2.0, 3.0]);
        assert!(t > 0.9 && t < 1.0 + 1e-12, "{t}");
    }

    /// The statistics read what the edits do: on a blob, a zoom widens it, a shift moves its
    /// centroid by the shift, a rotation turns its axis, a colour offset moves the mean.
    #[test]
    fn statistics_follow_the_edits() {
        let (h, w) = (28, 28);
        // An elongated blob (horizontal bar) in the centre, background -1.
        let mut img = vec![-1f32; h * w];
        for y in 12..16 {
            for x in 6..22 {
                img[y * w + x] = 1.0;
            }
        }
        let m0 = moments(&img, None, 1, h, w);
        let at = |e: Edit| {
            let (out, mask) = edits::apply(&img, (1, 1, h, w), &[e]);
            let m = moments(&out, Some(&mask), 1, h, w);
            (out, m)
        };
        let (_, mz) = at(edit_for(Transform::Zoom, 0, 1, w, 0.5));
        assert!(
            stat(Transform::Zoom, 0, &img, &mz, &m0, h * w)
                > stat(Transform::Zoom, 0, &img, &m0, &m0, h * w)
        );
        let (_, ms) = at(edit_for(Transform::ShiftX, 0, 1, w, 0.5));
        assert!(
            (ms[1] - m0[1] - 0.5 * 100.0 * 28.0 / 256.0).abs() < 0.3,
            "{} {}",
            ms[1],
            m0[1]
        );
        let (_, mr) = at(edit_for(Transform::Rot2d, 0, 1, w, 1.0));
        let d = stat(Transform::Rot2d, 0, &img, &mr, &m0, h * w);
        assert!((d.abs() - 30.0).abs() < 3.0, "{d}");
        let (out, mc) = at(edit_for(Transform::Color, 0, 1, w, 0.25));
        let s = stat(Transform::Color, 0, &out, &mc, &m0, h * w);
        let s0 = stat(Transform::Color, 0, &img, &m0, &m0, h * w);
        assert!((s - s0 - 0.25).abs() < 1e-5, "{s} {s0}");
    }
}
