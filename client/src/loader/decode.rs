//! Decoding views: png/jpg/npy fields to CHW f32 in [0, 1], and a sample's views.

use super::shard::RawSample;

/// A decoded CHW image in [0, 1]: (pixels, C, H, W).
pub type Image = (Vec<f32>, usize, usize, usize);

/// Most pixels (width × height) a decoded image may have: PIL's `MAX_IMAGE_PIXELS`. A small
/// compressed file can declare a huge image (a 700-byte JPEG can claim 65000×65000); its size is
/// checked from the header, before anything is allocated for the pixels.
pub const MAX_IMAGE_PIXELS: u64 = 89_478_485;

fn check_pixels(w: u64, h: u64) -> Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("image of {w}x{h} pixels is empty"));
    }
    if w.saturating_mul(h) > MAX_IMAGE_PIXELS {
        return Err(format!(
            "image of {w}x{h} pixels is over the decoder's limit of {MAX_IMAGE_PIXELS} pixels"
        ));
    }
    Ok(())
}

/// Decodes one image field (png/jpg/jpeg/npy) to CHW f32 in [0, 1]; returns (pixels, C, H, W).
pub fn decode_image(field: &str, data: &[u8]) -> Result<Image, String> {
    let ext = field.rsplit('.').next().unwrap_or(field);
    match ext {
        "png" => {
            let mut dec = png::Decoder::new(std::io::Cursor::new(data));
            dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
            let mut r = dec.read_info().map_err(|e| e.to_string())?;
            let (w, h) = (r.info().width as u64, r.info().height as u64);
            check_pixels(w, h)?;
            let mut buf = vec![0; r.output_buffer_size().ok_or("png too large")?];
            let info = r.next_frame(&mut buf).map_err(|e| e.to_string())?;
            let (w, h) = (info.width as usize, info.height as usize);
            let c_in = info.color_type.samples();
            let c = if c_in >= 3 { 3 } else { 1 };
            let mut out = vec![0.0; c * h * w];
            for i in 0..h * w {
                for k in 0..c {
                    out[k * h * w + i] = buf[i * c_in + k] as f32 / 255.0;
                }
            }
            Ok((out, c, h, w))
        }
        "jpg" | "jpeg" => {
            let mut dec = jpeg_decoder::Decoder::new(data);
            dec.read_info().map_err(|e| e.to_string())?;
            let info = dec.info().ok_or("jpeg without header")?;
            check_pixels(info.width as u64, info.height as u64)?;
            let px = dec.decode().map_err(|e| e.to_string())?;
            let info = dec.info().ok_or("jpeg without header")?;
            let (w, h) = (info.width as usize, info.height as usize);
            let c = px.len() / (w * h);
            let mut out = vec![0.0; c * h * w];
            for i in 0..h * w {
                for k in 0..c {
                    out[k * h * w + i] = px[i * c + k] as f32 / 255.0;
                }
            }
            Ok((out, c, h, w))
        }
        "npy" => {
            // genrep's npy views: float32 [C, H, W] in [-1, 1].
            let a = genrep_wire::npy::NpyArray::parse(data).map_err(|e| e.to_string())?;
            let [c, h, w] = a.shape[..] else {
                return Err(format!(
                    "npy image must be [C, H, W], got shape {:?}",
                    a.shape
                ));
            };
            if c > 4 {
                return Err(format!("npy image has {c} channels (at most 4)"));
            }
            check_pixels(w as u64, h as u64)?;
            let vals = a
                .to_f32()
                .filter(|_| a.dtype.is_float())
                .ok_or_else(|| format!("npy image must be float, got {}", a.dtype.name()))?;
            Ok((vals.into_iter().map(|v| (v + 1.0) / 2.0).collect(), c, h, w))
        }
        other => Err(format!("unsupported image type `{other}`")),
    }
}

fn find_field<'a>(s: &'a RawSample, stem: &str) -> Option<(&'a String, &'a Vec<u8>)> {
    s.fields
        .iter()
        .find(|(k, _)| k.split('.').next() == Some(stem) && k.contains('.'))
}

/// Views a sample offers: anchor + its positives for genrep samples (the server's `views`
/// parameter counts the positives), 2 for a plain image (real data: two augmentations of it).
pub fn views_in(s: &RawSample) -> usize {
    if find_field(s, genrep_wire::ANCHOR_STEM).is_none() {
        return 2;
    }
    1 + (0..)
        .take_while(|i| find_field(s, &genrep_wire::pos_stem(*i)).is_some())
        .count()
}

/// The first `views` view images of a sample: `anchor.*`, `pos0.*`, … (genrep samples), or a
/// single image field (`png`/`jpg`/…, real data) repeated, so that views differ only by pixel
/// augmentation. Asking a genrep sample for more views than it has is an error that says what
/// to change, never a silent repeat.
pub fn sample_views(s: &RawSample, views: usize) -> Result<Vec<Image>, String> {
    let mut out = Vec::new();
    if let Some((k, v)) = find_field(s, genrep_wire::ANCHOR_STEM) {
        let have = views_in(s);
        if views > have {
            return Err(format!(
                "--views {views} asks for the anchor and {} positive(s), but the sample has {} \
                 (the server's `views` parameter counts positives: request views={} from it, \
                 or pass --views {have})",
                views - 1,
                have - 1,
                views - 1
            ));
        }
        out.push(decode_image(k, v)?);
        for i in 0..views.saturating_sub(1) {
            let (k, v) = find_field(s, &genrep_wire::pos_stem(i)).expect("counted above");
            out.push(decode_image(k, v)?);
        }
    } else {
        let (k, v) = s
            .fields
            .iter()
            .find(|(k, _)| matches!(k.as_str(), "png" | "jpg" | "jpeg" | "npy"))
            .ok_or("no image field (anchor.* or png/jpg/npy)")?;
        out.push(decode_image(k, v)?);
        while out.len() < views {
            out.push(out.last().unwrap().clone());
        }
    }
    Ok(out)
}
