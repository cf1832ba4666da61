//! Image tensors to bytes: pixel quantisation, PNG encoding and grids.
//!
//! Quantisation: `u8 = clamp(round((x + 1) * 127.5), 0, 255)` for generator outputs in [-1, 1].

use std::io::Cursor;

/// One image as 8-bit pixels, channels interleaved (HWC), 1 (gray) or 3 (RGB) channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image8 {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

#[inline]
fn quantise(x: f32) -> u8 {
    ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

impl Image8 {
    /// From one CHW f32 image in [-1, 1].
    pub fn from_chw(chw: &[f32], channels: usize, height: usize, width: usize) -> Self {
        assert_eq!(chw.len(), channels * height * width);
        let plane = height * width;
        let mut pixels = vec![0u8; chw.len()];
        for c in 0..channels {
            for i in 0..plane {
                pixels[i * channels + c] = quantise(chw[c * plane + i]);
            }
        }
        Self {
            width,
            height,
            channels,
            pixels,
        }
    }

    /// Encodes as PNG (8-bit gray or RGB). Fast compression: the server encodes every image it streams.
    pub fn to_png(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pixels.len() / 2 + 128);
        {
            let mut enc =
                png::Encoder::new(Cursor::new(&mut out), self.width as u32, self.height as u32);
            enc.set_color(if self.channels == 3 {
                png::ColorType::Rgb
            } else {
                png::ColorType::Grayscale
            });
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Fast);
            let mut w = enc.write_header().expect("writing to a Vec cannot fail");
            w.write_image_data(&self.pixels)
                .expect("pixel buffer matches the header");
        }
        out
    }

    /// Encodes as baseline JPEG at `quality` (1-100).
    pub fn to_jpeg(&self, quality: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pixels.len() / 4 + 1024);
        let color = if self.channels == 3 {
            jpeg_encoder::ColorType::Rgb
        } else {
            jpeg_encoder::ColorType::Luma
        };
        jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
            .encode(&self.pixels, self.width as u16, self.height as u16, color)
            .expect("pixel buffer matches the image size");
        out
    }
}

/// Lays out `rows` of images (all the same size and channels) with a `pad`-pixel border.
/// Images as a grid of `per_row` columns (PNG previews of a batch).
pub fn grid_of(images: &[Image8], per_row: usize, pad: usize) -> Image8 {
    let rows: Vec<Vec<Image8>> = images.chunks(per_row.max(1)).map(|r| r.to_vec()).collect();
    grid(&rows, pad)
}

pub fn grid(rows: &[Vec<Image8>], pad: usize) -> Image8 {
    let first = &rows[0][0];
    let (h, w, c) = (first.height, first.width, first.channels);
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let gw = ncols * (w + pad) + pad;
    let gh = rows.len() * (h + pad) + pad;
    let mut pixels = vec![255u8; gw * gh * c];
    for (r, row) in rows.iter().enumerate() {
        for (k, img) in row.iter().enumerate() {
            let (y0, x0) = (pad + r * (h + pad), pad + k * (w + pad));
            for y in 0..h {
                let dst = ((y0 + y) * gw + x0) * c;
                let src = y * w * c;
                pixels[dst..dst + w * c].copy_from_slice(&img.pixels[src..src + w * c]);
            }
        }
    }
    Image8 {
        width: gw,
        height: gh,
        channels: c,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantise_range() {
        assert_eq!(quantise(-1.0), 0);
        assert_eq!(quantise(1.0), 255);
        assert_eq!(quantise(0.0), 128);
        assert_eq!(quantise(7.0), 255);
    }

    #[test]
    fn chw_to_hwc_and_grid() {
        let img = Image8::from_chw(&[-1.0, 1.0, 1.0, -1.0, 0.0, 0.0], 3, 1, 2);
        assert_eq!(img.pixels, vec![0, 255, 128, 255, 0, 128]);
        let g = grid(&[vec![img.clone(), img.clone()], vec![img]], 1);
        assert_eq!((g.width, g.height), (2 * 3 + 1, 2 * 2 + 1));
        assert!(g.to_png().starts_with(b"\x89PNG"));
        assert!(g.to_jpeg(90).starts_with(&[0xff, 0xd8]));
    }
}
