//! Contrastive losses over view groups: SimCLR's NT-Xent (any number of views per sample) and
//! SupCon (positives = same class).
//!
//! Input: L2-normalised embeddings `z` of shape [V·B, D], ordered view-major (all B anchors, then
//! all B first positives, …), and for SupCon the class of each of the B samples.

use candle_core::{DType, Device, Result, Tensor, D};

/// Mean over anchors i of `-1/|P(i)| Σ_{p∈P(i)} log( exp(s_ip/τ) / Σ_{a≠i} exp(s_ia/τ) )`, where
/// `P(i)` are the other views of the same sample (SimCLR / NT-Xent, generalised to V views) or of
/// the same class (SupCon). With V = 2 and SimCLR this is exactly the NT-Xent loss.
fn contrastive(z: &Tensor, positive: &Tensor, temperature: f64) -> Result<Tensor> {
    let n = z.dim(0)?;
    let dev = z.device();
    let sim = (z.matmul(&z.t()?)? / temperature)?;
    let eye = Tensor::eye(n, DType::F32, dev)?;
    // Remove self-similarity from the denominator with a large negative on the diagonal.
    let logits = (sim - (&eye * 1e9)?)?;
    let max = logits.max_keepdim(1)?.detach();
    let logits = logits.broadcast_sub(&max)?;
    let log_denominator = logits.exp()?.sum_keepdim(1)?.log()?;
    let log_prob = logits.broadcast_sub(&log_denominator)?;
    let pos = (positive - &eye)?; // never the anchor itself
    let n_pos = pos.sum_keepdim(1)?;
    let mean_log_prob_pos = (log_prob * &pos)?.sum_keepdim(1)?.div(&n_pos)?;
    mean_log_prob_pos.mean_all()?.neg()
}

fn group_mask(ids: &[u32], dev: &Device) -> Result<Tensor> {
    let n = ids.len();
    let mut m = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            if ids[i] == ids[j] {
                m[i * n + j] = 1.0;
            }
        }
    }
    Tensor::from_vec(m, (n, n), dev)
}

/// SimCLR NT-Xent over `views` views of `batch` samples (z: [views·batch, D], normalised).
pub fn nt_xent(z: &Tensor, views: usize, temperature: f64) -> Result<Tensor> {
    let b = z.dim(0)? / views;
    let ids: Vec<u32> = (0..views).flat_map(|_| 0..b as u32).collect();
    contrastive(z, &group_mask(&ids, z.device())?, temperature)
}

/// SupCon: positives are all other views of samples with the same label.
pub fn supcon(z: &Tensor, views: usize, labels: &[u32], temperature: f64) -> Result<Tensor> {
    let ids: Vec<u32> = (0..views).flat_map(|_| labels.iter().copied()).collect();
    contrastive(z, &group_mask(&ids, z.device())?, temperature)
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hand_nt_xent(z: &[[f32; 2]], views: usize, t: f32) -> f32 {
        // Direct transcription of the definition.
        let n = z.len();
        let b = n / views;
        let dot = |a: &[f32; 2], c: &[f32; 2]| a[0] * c[0] + a[1] * c[1];
        let mut total = 0.0;
        for i in 0..n {
            let denom: f32 = (0..n)
                .filter(|&a| a != i)
                .map(|a| (dot(&z[i], &z[a]) / t).exp())
                .sum();
            let pos: Vec<usize> = (0..n).filter(|&p| p != i && p % b == i % b).collect();
            let s: f32 = pos
                .iter()
                .map(|&p| ((dot(&z[i], &z[p]) / t).exp() / denom).ln())
                .sum();
            total += -s / pos.len() as f32;
        }
        total / n as f32
    }

    fn unit(a: f32) -> [f32; 2] {
        [a.cos(), a.sin()]
    }

    #[test]
    fn nt_xent_matches_hand_computation() {
        // 2 samples x 2 views, and 2 samples x 3 views.
        for (angles, views) in [
            (vec![0.0, 1.5, 0.2, 1.9], 2),
            (vec![0.0, 2.0, 0.3, 2.2, -0.1, 1.7], 3),
        ] {
            let z: Vec<[f32; 2]> = angles.iter().map(|&a| unit(a)).collect();
            let flat: Vec<f32> = z.iter().flatten().copied().collect();
            let t = Tensor::from_vec(flat, (z.len(), 2), &Device::Cpu).unwrap();
            let got = nt_xent(&t, views, 0.5).unwrap().to_scalar::<f32>().unwrap();
            let want = hand_nt_xent(&z, views, 0.5);
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn nt_xent_two_views_known_value() {
        // Orthogonal pairs: z = [e0, e1, e0, e1], τ = 1. For each anchor the positive has s = 1,
        // the negatives s = 0 and 0 (other sample's two views)... denominator e + 2, so
        // loss = -ln(e / (e + 2)).
        let t = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 0.], [0., 1.]], &Device::Cpu).unwrap();
        let got = nt_xent(&t, 2, 1.0).unwrap().to_scalar::<f32>().unwrap();
        let e = std::f32::consts::E;
        assert!((got - (-(e / (e + 2.0)).ln())).abs() < 1e-6, "{got}");
    }

    #[test]
    fn supcon_uses_labels() {
        // Same as above but both samples share a label: each anchor has 3 positives, all others.
        let t = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 0.], [0., 1.]], &Device::Cpu).unwrap();
        let got = supcon(&t, 2, &[4, 4], 1.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let e = std::f32::consts::E;
        let d = e + 2.0;
        let want = -((e / d).ln() + 2.0 * (1.0 / d).ln()) / 3.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // Different labels reduce SupCon to SimCLR.
        let a = supcon(&t, 2, &[0, 1], 1.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = nt_xent(&t, 2, 1.0).unwrap().to_scalar::<f32>().unwrap();
        assert!((a - b).abs() < 1e-6);
    }
}
