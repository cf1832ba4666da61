//! Seeded per-view pixel augmentations on CHW f32 images in [0, 1].
//!
//! Each view of each sample gets its own RNG seeded from (seed, step, sample, view), so a batch is
//! reproducible and views are augmented independently (GenRep applies pixel augmentations on top of
//! latent views). Grayscale images get correct no-ops for saturation, hue and random grayscale.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Augmentation parameters; see [`Augment::preset`].
#[derive(Debug, Clone, PartialEq)]
pub struct Augment {
    /// Random resized crop area range (None = no crop).
    pub crop_scale: Option<(f32, f32)>,
    pub flip_p: f32,
    /// (brightness, contrast, saturation, hue) and the probability of applying jitter.
    pub jitter: (f32, f32, f32, f32),
    pub jitter_p: f32,
    pub gray_p: f32,
    pub blur_p: f32,
}

impl Augment {
    /// `genrep` (the GenRep/SupCon recipe), `simclr`, or `none` (latent views only).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "genrep" | "supcon" => Self {
                crop_scale: Some((0.2, 1.0)),
                flip_p: 0.5,
                jitter: (0.4, 0.4, 0.4, 0.1),
                jitter_p: 0.8,
                gray_p: 0.2,
                blur_p: 0.0,
            },
            "simclr" => Self {
                crop_scale: Some((0.08, 1.0)),
                flip_p: 0.5,
                jitter: (0.8, 0.8, 0.8, 0.2),
                jitter_p: 0.8,
                gray_p: 0.2,
                blur_p: 0.5,
            },
            "none" => Self {
                crop_scale: None,
                flip_p: 0.0,
                jitter: (0.0, 0.0, 0.0, 0.0),
                jitter_p: 0.0,
                gray_p: 0.0,
                blur_p: 0.0,
            },
            _ => return None,
        })
    }

    pub const PRESETS: [&'static str; 3] = ["genrep", "simclr", "none"];

    /// Augments one CHW image in place.
    pub fn apply(&self, img: &mut Vec<f32>, c: usize, h: usize, w: usize, rng: &mut ChaCha8Rng) {
        if let Some((lo, hi)) = self.crop_scale {
            *img = random_resized_crop(img, c, h, w, lo, hi, rng);
        }
        if rng.random::<f32>() < self.flip_p {
            for ch in 0..c {
                for y in 0..h {
                    img[ch * h * w + y * w..ch * h * w + (y + 1) * w].reverse();
                }
            }
        }
        if rng.random::<f32>() < self.jitter_p {
            let (b, ct, s, hu) = self.jitter;
            let mut order = [0usize, 1, 2, 3];
            for i in (1..4).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            for op in order {
                match op {
                    0 if b > 0.0 => {
                        let f = rng.random_range(1.0 - b..=1.0 + b);
                        img.iter_mut().for_each(|x| *x = (*x * f).clamp(0.0, 1.0));
                    }
                    1 if ct > 0.0 => {
                        let f = rng.random_range(1.0 - ct..=1.0 + ct);
                        let gray = luma(img, c, h * w);
                        let m = gray.iter().sum::<f32>() / gray.len() as f32;
                        img.iter_mut()
                            .for_each(|x| *x = ((*x - m) * f + m).clamp(0.0, 1.0));
                    }
                    2 if s > 0.0 && c == 3 => {
                        let f = rng.random_range(1.0 - s..=1.0 + s);
                        let gray = luma(img, c, h * w);
                        for ch in 0..3 {
                            for (i, g) in gray.iter().enumerate() {
                                let x = &mut img[ch * h * w + i];
                                *x = ((*x - g) * f + g).clamp(0.0, 1.0);
                            }
                        }
                    }
                    3 if hu > 0.0 && c == 3 => {
                        let shift = rng.random_range(-hu..=hu);
                        hue_shift(img, h * w, shift);
                    }
                    _ => {}
                }
            }
        }
        if rng.random::<f32>() < self.gray_p && c == 3 {
            let gray = luma(img, c, h * w);
            for ch in 0..3 {
                img[ch * h * w..(ch + 1) * h * w].copy_from_slice(&gray);
            }
        }
        if rng.random::<f32>() < self.blur_p {
            let sigma = rng.random_range(0.1f32..2.0);
            gaussian_blur(img, c, h, w, sigma);
        }
    }
}

/// RNG of one view of one sample at one step.
pub fn view_rng(seed: u64, step: u64, sample: u64, view: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&step.to_le_bytes());
    key[16..24].copy_from_slice(&sample.to_le_bytes());
    key[24..].copy_from_slice(&view.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

fn luma(img: &[f32], c: usize, plane: usize) -> Vec<f32> {
    if c == 1 {
        return img[..plane].to_vec();
    }
    (0..plane)
        .map(|i| 0.299 * img[i] + 0.587 * img[plane + i] + 0.114 * img[2 * plane + i])
        .collect()
}

fn hue_shift(img: &mut [f32], plane: usize, shift: f32) {
    for i in 0..plane {
        let (r, g, b) = (img[i], img[plane + i], img[2 * plane + i]);
        let max = r.max(g).max(b);
        let min = r.min(g).min(b);
        let d = max - min;
        if d <= 0.0 {
            continue;
        }
        let mut hh = if max == r {
            ((g - b) / d).rem_euclid(6.0)
        } else if max == g {
            (b - r) / d + 2.0
        } else {
            (r - g) / d + 4.0
        } / 6.0;
        hh = (hh + shift).rem_euclid(1.0);
        let s = d / max;
        let v = max;
        let h6 = hh * 6.0;
        let k = |n: f32| {
            let kk = (n + h6).rem_euclid(6.0);
            v - v * s * kk.min(4.0 - kk).clamp(0.0, 1.0)
        };
        img[i] = k(5.0);
        img[plane + i] = k(3.0);
        img[2 * plane + i] = k(1.0);
    }
}

fn bilinear(src: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    let y = y.clamp(0.0, (h - 1) as f32);
    let x = x.clamp(0.0, (w - 1) as f32);
    let (y0, x0) = (y.floor() as usize, x.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (fy, fx) = (y - y0 as f32, x - x0 as f32);
    let a = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
    let b = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
    a * (1.0 - fy) + b * fy
}

/// torchvision's RandomResizedCrop (ratio 3/4..4/3, 10 tries, centre-crop fallback), resized
/// back to h×w bilinearly.
fn random_resized_crop(
    img: &[f32],
    c: usize,
    h: usize,
    w: usize,
    lo: f32,
    hi: f32,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let area = (h * w) as f32;
    let (mut ch, mut cw, mut top, mut left) = (h as f32, w as f32, 0.0, 0.0);
    for _ in 0..10 {
        let target = area * rng.random_range(lo..=hi);
        let log_r = rng.random_range((3.0f32 / 4.0).ln()..=(4.0f32 / 3.0).ln());
        let ratio = log_r.exp();
        let tw = (target * ratio).sqrt();
        let th = (target / ratio).sqrt();
        if tw >= 1.0 && th >= 1.0 && tw <= w as f32 && th <= h as f32 {
            (ch, cw) = (th, tw);
            top = rng.random_range(0.0..=(h as f32 - th));
            left = rng.random_range(0.0..=(w as f32 - tw));
            break;
        }
    }
    let mut out = vec![0.0; c * h * w];
    for k in 0..c {
        let src = &img[k * h * w..(k + 1) * h * w];
        for y in 0..h {
            let sy = top + (y as f32 + 0.5) * ch / h as f32 - 0.5;
            for x in 0..w {
                let sx = left + (x as f32 + 0.5) * cw / w as f32 - 0.5;
                out[k * h * w + y * w + x] = bilinear(src, h, w, sy, sx);
            }
        }
    }
    out
}

fn gaussian_blur(img: &mut [f32], c: usize, h: usize, w: usize, sigma: f32) {
    let radius = ((h.min(w) as f32 * 0.1) as usize / 2).max(1);
    let k: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let d = i as f32 - radius as f32;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / sum).collect();
    let r = radius as isize;
    for ch in 0..c {
        let p = &mut img[ch * h * w..(ch + 1) * h * w];
        let mut tmp = vec![0.0; h * w];
        for y in 0..h {
            for x in 0..w {
                tmp[y * w + x] = (-r..=r)
                    .map(|d| {
                        p[y * w + (x as isize + d).clamp(0, w as isize - 1) as usize]
                            * k[(d + r) as usize]
                    })
                    .sum();
            }
        }
        for y in 0..h {
            for x in 0..w {
                p[y * w + x] = (-r..=r)
                    .map(|d| {
                        tmp[(y as isize + d).clamp(0, h as isize - 1) as usize * w + x]
                            * k[(d + r) as usize]
                    })
                    .sum();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(c: usize, h: usize, w: usize) -> Vec<f32> {
        (0..c * h * w)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect()
    }

    #[test]
    fn shapes_ranges_and_determinism() {
        for name in Augment::PRESETS {
            let a = Augment::preset(name).unwrap();
            for c in [1, 3] {
                let mut x = image(c, 28, 28);
                let mut y = x.clone();
                a.apply(&mut x, c, 28, 28, &mut view_rng(1, 2, 3, 0));
                a.apply(&mut y, c, 28, 28, &mut view_rng(1, 2, 3, 0));
                assert_eq!(x.len(), c * 28 * 28);
                assert_eq!(x, y, "{name}: not deterministic");
                assert!(
                    x.iter().all(|v| (0.0..=1.0).contains(v)),
                    "{name}: out of range"
                );
                let mut z = image(c, 28, 28);
                a.apply(&mut z, c, 28, 28, &mut view_rng(1, 2, 3, 1));
                if name != "none" {
                    assert_ne!(x, z, "{name}: views not independent");
                } else {
                    assert_eq!(z, image(c, 28, 28));
                }
            }
        }
    }

    #[test]
    fn grayscale_noops_for_one_channel() {
        let a = Augment {
            crop_scale: None,
            flip_p: 0.0,
            jitter: (0.0, 0.0, 0.9, 0.5),
            jitter_p: 1.0,
            gray_p: 1.0,
            blur_p: 0.0,
        };
        let mut x = image(1, 8, 8);
        a.apply(&mut x, 1, 8, 8, &mut view_rng(0, 0, 0, 0));
        assert_eq!(x, image(1, 8, 8));
        // On RGB, the same settings change the image and grayscale makes channels equal.
        let mut y = image(3, 8, 8);
        a.apply(&mut y, 3, 8, 8, &mut view_rng(0, 0, 0, 0));
        assert_eq!(y[..64], y[64..128]);
    }
}
