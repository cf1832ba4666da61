//! The pixel edits a walk learns to imitate: a colour offset per channel, then one affine warp
//! composed of a 2-D rotation, a zoom and a shift, resampled bilinearly once, with the mask of the
//! pixels whose source lies inside the frame.
//!
//! GenRep applies its edits one after the other, resampling after each, and its rotation resets
//! the mask, so its final mask covers zoom and shift only. Here the geometric edits are one map
//! (one resampling, no compounded blur), and the mask covers all of them. Pixels outside the mask
//! are 0 in the target and do not count in the loss.

/// One sample's edit, in the order it is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    /// Added to each channel (images are in [-1, 1]); empty: no colour edit.
    pub colour: Vec<f32>,
    /// Rotation in degrees, counter-clockwise on the screen.
    pub rot2d_deg: f32,
    /// Zoom factor (> 1 enlarges the content about the image centre).
    pub zoom: f32,
    /// Shift in pixels: +x moves content right, +y moves it down.
    pub shift: (f32, f32),
}

impl Edit {
    /// The edit that changes nothing.
    pub fn identity() -> Self {
        Self {
            colour: Vec::new(),
            rot2d_deg: 0.0,
            zoom: 1.0,
            shift: (0.0, 0.0),
        }
    }

    /// Where output pixel `(x, y)` reads from: the inverse of `shift ∘ zoom ∘ rotate` about the
    /// image centre.
    fn source(&self, x: f32, y: f32, (cx, cy): (f32, f32)) -> (f32, f32) {
        let (dx, dy) = (x - cx - self.shift.0, y - cy - self.shift.1);
        let (dx, dy) = (dx / self.zoom, dy / self.zoom);
        // The forward rotation (counter-clockwise on screen, y down) maps
        // (u, v) → (u·cos + v·sin, −u·sin + v·cos); its inverse is the transpose.
        let (s, c) = self.rot2d_deg.to_radians().sin_cos();
        (cx + dx * c - dy * s, cy + dx * s + dy * c)
    }
}

/// Applies `edits[i]` to image `i` of `images` (`[B, C, H, W]` row-major): the edited images and
/// the mask (`[B, H, W]`, 1 where the source point lies inside the frame, else 0).
///
/// # Panics
/// If the lengths disagree with the shape, or a colour edit names another number of channels.
pub fn apply(
    images: &[f32],
    (b, c, h, w): (usize, usize, usize, usize),
    edits: &[Edit],
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(images.len(), b * c * h * w, "images and shape disagree");
    assert_eq!(edits.len(), b, "one edit per image");
    let mut out = vec![0f32; images.len()];
    let mut mask = vec![0f32; b * h * w];
    let centre = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let (wmax, hmax) = (w as f32 - 1.0, h as f32 - 1.0);
    for (i, e) in edits.iter().enumerate() {
        assert!(
            e.colour.is_empty() || e.colour.len() == c,
            "a colour edit of {} channels on {c}-channel images",
            e.colour.len()
        );
        let img = &images[i * c * h * w..][..c * h * w];
        for y in 0..h {
            for x in 0..w {
                let (sx, sy) = e.source(x as f32, y as f32, centre);
                // A small tolerance, so that the identity and whole-pixel shifts keep the edge.
                const EPS: f32 = 1e-4;
                if !(sx >= -EPS && sy >= -EPS && sx <= wmax + EPS && sy <= hmax + EPS) {
                    continue;
                }
                let (sx, sy) = (sx.clamp(0.0, wmax), sy.clamp(0.0, hmax));
                let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
                let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
                mask[(i * h + y) * w + x] = 1.0;
                for ch in 0..c {
                    let p = &img[ch * h * w..][..h * w];
                    let top = p[y0 * w + x0] * (1.0 - fx) + p[y0 * w + x1] * fx;
                    let bottom = p[y1 * w + x0] * (1.0 - fx) + p[y1 * w + x1] * fx;
                    let colour = e.colour.get(ch).copied().unwrap_or(0.0);
                    out[((i * c + ch) * h + y) * w + x] = top * (1.0 - fy) + bottom * fy + colour;
                }
            }
        }
    }
    (out, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `h×w` one-channel image with 1 at `(x, y)`.
    fn dot(h: usize, w: usize, x: usize, y: usize) -> Vec<f32> {
        let mut v = vec![0f32; h * w];
        v[y * w + x] = 1.0;
        v
    }

    fn argmax(v: &[f32], w: usize) -> (usize, usize) {
        let i = v
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        (i % w, i / w)
    }

    fn edit(rot: f32, zoom: f32, shift: (f32, f32)) -> Edit {
        Edit {
            colour: Vec::new(),
            rot2d_deg: rot,
            zoom,
            shift,
        }
    }

    #[test]
    fn the_identity_changes_nothing_and_masks_nothing() {
        let img: Vec<f32> = (0..2 * 5 * 7).map(|i| i as f32 * 0.1).collect();
        let (out, mask) = apply(&img, (1, 2, 5, 7), &[Edit::identity()]);
        assert_eq!(out, img);
        assert!(mask.iter().all(|&m| m == 1.0));
    }

    #[test]
    fn a_shift_by_k_pixels_moves_a_dot_by_k_and_masks_the_uncovered_edge() {
        let (h, w) = (9, 11);
        let img = dot(h, w, 4, 3);
        let (out, mask) = apply(&img, (1, 1, h, w), &[edit(0.0, 1.0, (3.0, -2.0))]);
        assert_eq!(argmax(&out, w), (7, 1));
        assert_eq!(out[w + 7], 1.0);
        // The mask is 1 exactly where the source (x − 3, y + 2) lies inside the frame.
        for y in 0..h {
            for x in 0..w {
                let inside = x >= 3 && y + 2 < h;
                assert_eq!(mask[y * w + x], inside as u8 as f32, "({x}, {y})");
            }
        }
    }

    #[test]
    fn zoom_keeps_the_centre_and_scales_distances_from_it() {
        let (h, w) = (15, 15);
        // The centre pixel stays where it is.
        let (out, mask) = apply(
            &dot(h, w, 7, 7),
            (1, 1, h, w),
            &[edit(0.0, 2.0, (0.0, 0.0))],
        );
        assert_eq!(argmax(&out, w), (7, 7));
        assert!(
            mask.iter().all(|&m| m == 1.0),
            "zooming in reads inside the frame"
        );
        // A dot 2 px right of the centre lands 4 px right of it.
        let (out, _) = apply(
            &dot(h, w, 9, 7),
            (1, 1, h, w),
            &[edit(0.0, 2.0, (0.0, 0.0))],
        );
        assert_eq!(argmax(&out, w), (11, 7));
        // Zooming out leaves a border the source never covered.
        let (_, mask) = apply(
            &dot(h, w, 7, 7),
            (1, 1, h, w),
            &[edit(0.0, 0.5, (0.0, 0.0))],
        );
        assert_eq!(mask[0], 0.0);
        assert_eq!(mask[7 * w + 7], 1.0);
        let inside = mask.iter().filter(|&&m| m == 1.0).count();
        assert_eq!(inside, 7 * 7, "half the size: the middle 7×7 of 15×15");
    }

    #[test]
    fn a_quarter_turn_moves_a_dot_from_right_to_top() {
        let (h, w) = (9, 9);
        let (out, mask) = apply(
            &dot(h, w, 6, 4),
            (1, 1, h, w),
            &[edit(90.0, 1.0, (0.0, 0.0))],
        );
        assert_eq!(argmax(&out, w), (4, 2), "counter-clockwise on screen");
        assert!((out[2 * w + 4] - 1.0).abs() < 1e-5);
        assert!(
            mask.iter().all(|&m| m == 1.0),
            "a square turned by 90° fills its frame"
        );
    }

    #[test]
    fn colour_is_added_per_channel_and_each_image_gets_its_own_edit() {
        let img = vec![0.25f32; 2 * 3 * 4 * 4];
        let e0 = Edit {
            colour: vec![0.5, -0.5, 0.0],
            ..Edit::identity()
        };
        let (out, _) = apply(&img, (2, 3, 4, 4), &[e0, Edit::identity()]);
        assert!(out[..16].iter().all(|&v| v == 0.75));
        assert!(out[16..32].iter().all(|&v| v == -0.25));
        assert!(out[32..48].iter().all(|&v| v == 0.25));
        assert!(out[48..].iter().all(|&v| v == 0.25), "image 1 is untouched");
    }

    #[test]
    fn half_pixel_shifts_interpolate() {
        let (h, w) = (5, 5);
        let (out, _) = apply(
            &dot(h, w, 2, 2),
            (1, 1, h, w),
            &[edit(0.0, 1.0, (0.5, 0.0))],
        );
        assert!((out[2 * w + 2] - 0.5).abs() < 1e-6 && (out[2 * w + 3] - 0.5).abs() < 1e-6);
    }
}
