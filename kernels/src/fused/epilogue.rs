//! StyleGAN2's modulated-conv epilogue as one CPU pass: `y·d + noise + bias → lrelu·√2 → clamp`
//! over a conv's output, over the four phases of a polyphase up-sampling conv (interleaved in the
//! same pass), or over a transposed conv's output (filtered by the FIR in the same pass).

use super::on_cpu_f32;
use crate::op::{Arg, CpuOp, Custom};
use candle_core::{DType, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// StyleGAN2's modulated-conv epilogue in one pass: `clamp(lrelu(y·d + noise + bias, 0.2) ·
/// gain, ±clamp)` with `d` the demodulation `[B, C]`, `noise` `[1 | B, H·W]` (already scaled by
/// its strength; `None`: no noise) and `bias` `[C]`. Composed from candle ops it is nine passes,
/// each allocating an activation-sized tensor; at 256 px they cost as much as the conv.
pub fn modulated_epilogue(
    y: &Tensor,
    d: &Tensor,
    noise: Option<&Tensor>,
    bias: &Tensor,
    gain: f64,
    clamp: Option<f64>,
) -> Result<Tensor> {
    epilogue(y, d, noise, bias, gain, clamp, Form::Plain)
}

/// [`modulated_epilogue`] of an up-sampling conv computed in polyphase form: `y` is
/// `[B, 4·C, H, W]`, the four output phases `(φy, φx)` phase-major, and the result
/// `[B, C, 2H, 2W]` takes output pixel `(2a + φy, 2b + φx)` from phase `(φy, φx)` at `(a, b)`
/// (`noise` is `[1 | B, 4·H·W]` at the output size). The interleaving is done in the same pass,
/// not as a strided copy.
pub fn modulated_epilogue_up(
    y: &Tensor,
    d: &Tensor,
    noise: Option<&Tensor>,
    bias: &Tensor,
    gain: f64,
    clamp: Option<f64>,
) -> Result<Tensor> {
    epilogue(y, d, noise, bias, gain, clamp, Form::Phases)
}

/// [`modulated_epilogue`] of an up-sampling conv computed as NVlabs does: `y` `[B, C, 2H+1,
/// 2W+1]` is the stride-2 transposed conv, and the pass first filters it with the separable FIR
/// `fir` (per axis, gain included) over a 1-pixel zero border, `f[y, x] = Σ_{p,q} fir[p]·fir[q]·
/// y[y−1+p, x−1+q]`, giving `[B, C, 2H, 2W]`, then applies the epilogue (`noise` at that size).
#[allow(clippy::too_many_arguments)]
pub fn modulated_epilogue_fir_up(
    y: &Tensor,
    fir: [f32; 4],
    d: &Tensor,
    noise: Option<&Tensor>,
    bias: &Tensor,
    gain: f64,
    clamp: Option<f64>,
) -> Result<Tensor> {
    let (_, _, h, w) = y.dims4()?;
    if h % 2 == 0 || w % 2 == 0 || h < 3 || w < 3 {
        candle_core::bail!(
            "modulated_epilogue_fir_up: a stride-2 transposed 3×3 conv is odd-sized and at least \
             3×3, got {:?}",
            y.dims()
        );
    }
    let fused = fusable(y, d, noise, bias);
    if !fused {
        return epilogue(
            &fir_composed(y, fir)?,
            d,
            noise,
            bias,
            gain,
            clamp,
            Form::Plain,
        );
    }
    epilogue(y, d, noise, bias, gain, clamp, Form::Fir(fir))
}

/// The FIR of [`modulated_epilogue_fir_up`] composed from candle ops.
fn fir_composed(y: &Tensor, fir: [f32; 4]) -> Result<Tensor> {
    let (_, _, h, w) = y.dims4()?;
    let p = y.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let axis = |t: &Tensor, dim: usize, n: usize| -> Result<Tensor> {
        let mut acc = (t.narrow(dim, 0, n)? * fir[0] as f64)?;
        for (q, &f) in fir.iter().enumerate().skip(1) {
            acc = (acc + (t.narrow(dim, q, n)? * f as f64)?)?;
        }
        Ok(acc)
    };
    axis(&axis(&p, 3, w - 1)?, 2, h - 1)
}

/// One row of the FIR's horizontal pass: `dst[x] = Σ_q fir[q]·src[x − 1 + q]`, zero outside
/// `src` (`dst` is one shorter than `src`).
#[inline]
fn fir_row(src: &[f32], dst: &mut [f32], fir: [f32; 4]) {
    let w = dst.len();
    debug_assert_eq!(src.len(), w + 1);
    let at = |i: isize| -> f32 {
        if i >= 0 && (i as usize) < src.len() {
            src[i as usize]
        } else {
            0.0
        }
    };
    let tap = |x: usize| -> f32 {
        let x = x as isize;
        fir[0] * at(x - 1) + fir[1] * at(x) + fir[2] * at(x + 1) + fir[3] * at(x + 2)
    };
    if w < 3 {
        for (x, d) in dst.iter_mut().enumerate() {
            *d = tap(x);
        }
        return;
    }
    dst[0] = tap(0);
    // Interior: all four taps inside `src`.
    for (x, d) in dst.iter_mut().enumerate().take(w - 1).skip(1) {
        *d = fir[0] * src[x - 1] + fir[1] * src[x] + fir[2] * src[x + 1] + fir[3] * src[x + 2];
    }
    dst[w - 1] = tap(w - 1);
}

/// `[B, 4·C, H, W]` phases (phase-major) → `[B, C, 2H, 2W]`, composed from candle ops.
fn interleave(y: &Tensor) -> Result<Tensor> {
    let (b, c4, h, w) = y.dims4()?;
    y.reshape((b, 2, 2, c4 / 4, h, w))?
        .permute((0, 3, 4, 1, 5, 2))?
        .reshape((b, c4 / 4, 2 * h, 2 * w))
}

/// Whether the one-pass CPU kernel can run: f32 on the CPU, and no input that needs a gradient
/// (the pass has no backward; the composed ops have, so training through the epilogue works).
fn fusable(y: &Tensor, d: &Tensor, noise: Option<&Tensor>, bias: &Tensor) -> bool {
    let mut all = vec![y, d, bias];
    all.extend(noise);
    on_cpu_f32(&all) && !all.iter().any(|t| t.track_op())
}

/// What the epilogue's input holds.
#[derive(Clone, Copy)]
enum Form {
    /// The conv output itself.
    Plain,
    /// Four output phases (see [`modulated_epilogue_up`]).
    Phases,
    /// A transposed conv's output, to be filtered first (see [`modulated_epilogue_fir_up`]).
    Fir([f32; 4]),
}

fn epilogue(
    y: &Tensor,
    d: &Tensor,
    noise: Option<&Tensor>,
    bias: &Tensor,
    gain: f64,
    clamp: Option<f64>,
    form: Form,
) -> Result<Tensor> {
    let (b, c, h, w) = y.dims4()?;
    // Off the f32 CPU path the phases are interleaved first, then the composed ops run.
    let fused = fusable(y, d, noise, bias);
    if matches!(form, Form::Phases) && (!fused || c % 4 != 0) {
        return epilogue(&interleave(y)?, d, noise, bias, gain, clamp, Form::Plain);
    }
    let (c, h, w) = match form {
        Form::Plain => (c, h, w),
        Form::Phases => (c / 4, 2 * h, 2 * w),
        Form::Fir(_) => (c, h - 1, w - 1),
    };
    if d.dims() != [b, c] || bias.dims() != [c] {
        candle_core::bail!(
            "modulated_epilogue: demodulation {:?} / bias {:?}, expected [{b}, {c}] / [{c}]",
            d.dims(),
            bias.dims()
        );
    }
    if let Some(n) = noise {
        let (nb, nhw) = n.dims2()?;
        if !(nb == 1 || nb == b) || nhw != h * w {
            candle_core::bail!(
                "modulated_epilogue: noise {:?}, expected [1 or {b}, {}]",
                n.dims(),
                h * w
            );
        }
    }
    if !fusable(y, d, noise, bias) {
        let mut x = y.broadcast_mul(&d.reshape((b, c, 1, 1))?)?;
        if let Some(n) = noise {
            x = x.broadcast_add(&n.reshape(((), 1, h, w))?)?;
        }
        let x = x.broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
        let pos = x.relu()?;
        let x = ((&pos + ((x - &pos)? * 0.2)?)? * gain)?;
        return match clamp {
            Some(m) => x.clamp(-m, m),
            None => Ok(x),
        };
    }
    let zeros;
    let noise = match noise {
        Some(n) => n.contiguous()?,
        None => {
            zeros = Tensor::zeros((1, h * w), DType::F32, y.device())?;
            zeros.clone()
        }
    };
    let op = Epilogue {
        bias: bias.to_vec1::<f32>()?,
        gain: gain as f32,
        clamp: clamp.map(|m| m as f32),
        form,
    };
    y.contiguous()?
        .apply_op3(&d.contiguous()?, &noise, Custom(op))
}

struct Epilogue {
    bias: Vec<f32>,
    gain: f32,
    clamp: Option<f32>,
    form: Form,
}

impl CpuOp<3> for Epilogue {
    const NAME: &'static str = "genrep-modulated-epilogue";
    const ARGS: [&'static str; 3] = [
        "modulated_epilogue: activation",
        "modulated_epilogue: demodulation",
        "modulated_epilogue: noise",
    ];

    fn forward(&self, [ya, d, n]: [Arg; 3]) -> Result<(Vec<f32>, Shape)> {
        match self.form {
            Form::Plain => {}
            Form::Phases => return self.forward_phases(ya, d.data, n.data),
            Form::Fir(fir) => return self.forward_fir(ya, fir, d.data, n.data),
        }
        let y = ya.data;
        let (b, c, h, w) = ya.shape.dims4()?;
        let hw = h * w;
        let out = self.planes(b * c, c, hw, d.data, n.data, |i, p| {
            for ((o, &v), &z) in p.out.iter_mut().zip(&y[i * hw..][..hw]).zip(p.noise) {
                o.write(self.apply(v, p.d, z, p.bias));
            }
        });
        Ok((out, ya.shape.clone()))
    }
}

/// One output plane `(sample, channel)` of an epilogue, as [`Epilogue::planes`] hands it out.
struct Plane<'a> {
    out: &'a mut [MaybeUninit<f32>],
    /// This plane's demodulation and bias.
    d: f32,
    bias: f32,
    /// The noise at the output size: the sample's own, or the one shared plane.
    noise: &'a [f32],
}

impl Epilogue {
    /// The output of `n` planes of `ohw` pixels, `c` channels per sample, one parallel task per
    /// plane: `fill(i, plane)` must write every pixel of plane `i`.
    fn planes(
        &self,
        n: usize,
        c: usize,
        ohw: usize,
        d: &[f32],
        noise: &[f32],
        fill: impl Fn(usize, Plane) + Sync,
    ) -> Vec<f32> {
        let per_sample_noise = noise.len() > ohw;
        crate::cpu::output_buffer(n * ohw, |out| {
            if ohw > 0 {
                out.par_chunks_mut(ohw).enumerate().for_each(|(i, o)| {
                    let s = i / c;
                    let noise = if per_sample_noise {
                        &noise[s * ohw..(s + 1) * ohw]
                    } else {
                        &noise[..ohw]
                    };
                    let plane = Plane {
                        out: o,
                        d: d[i],
                        bias: self.bias[i % c],
                        noise,
                    };
                    fill(i, plane);
                });
            }
            // SAFETY: `fill` writes every pixel of the plane it is given (each form's contract,
            // checked by its tests against the composed ops).
            unsafe { crate::cpu::init_all(out) }
        })
    }

    /// `clamp(lrelu(v·d + z + b)·gain)`, the one formula of every form.
    #[inline]
    fn apply(&self, v: f32, d: f32, z: f32, b: f32) -> f32 {
        let x = v * d + z + b;
        let x = if x < 0.0 { 0.2 * x } else { x } * self.gain;
        match self.clamp {
            Some(m) => x.clamp(-m, m),
            None => x,
        }
    }

    /// The filtering form: one output plane `(b, c)` per task, the FIR's horizontal pass into a
    /// plane-sized buffer, then its vertical pass with the epilogue.
    fn forward_fir(
        &self,
        ya: Arg,
        fir: [f32; 4],
        d: &[f32],
        noise: &[f32],
    ) -> Result<(Vec<f32>, Shape)> {
        let y = ya.data;
        let (b, c, th, tw) = ya.shape.dims4()?;
        let (h, w) = (th - 1, tw - 1);
        let (thw, ohw) = (th * tw, h * w);
        let out = self.planes(b * c, c, ohw, d, noise, |i, p| {
            let src = &y[i * thw..][..thw];
            // Horizontal: row r of `src` (width w + 1, a zero column either side) → width w.
            let mut hor = vec![0f32; th * w];
            for (srow, hrow) in src.chunks_exact(tw).zip(hor.chunks_exact_mut(w)) {
                fir_row(srow, hrow, fir);
            }
            // Vertical, a zero row either side, then the epilogue.
            let zero = vec![0f32; w];
            let row = |r: usize| hor.get(r * w..(r + 1) * w).unwrap_or(&zero);
            for oy in 0..h {
                let (r0, r1) = (if oy > 0 { row(oy - 1) } else { &zero[..] }, row(oy));
                let (r2, r3) = (row(oy + 1), row(oy + 2));
                let orow = p.out[oy * w..][..w].iter_mut();
                let taps = r0.iter().zip(r1).zip(r2).zip(r3);
                for ((((a, b), c), e), (ov, &z)) in taps.zip(orow.zip(&p.noise[oy * w..][..w])) {
                    let v = fir[0] * a + fir[1] * b + fir[2] * c + fir[3] * e;
                    ov.write(self.apply(v, p.d, z, p.bias));
                }
            }
        });
        Ok((out, Shape::from((b, c, h, w))))
    }

    /// The interleaving form: one output plane `(b, c)` per task, reading its four phase planes.
    fn forward_phases(&self, ya: Arg, d: &[f32], noise: &[f32]) -> Result<(Vec<f32>, Shape)> {
        let y = ya.data;
        let (b, c4, h, w) = ya.shape.dims4()?;
        let c = c4 / 4;
        let (hw, ohw, ow) = (h * w, 4 * h * w, 2 * w);
        // The four phases together write every pixel of each output plane once.
        let out = self.planes(b * c, c, ohw, d, noise, |i, p| {
            let (s, ch) = (i / c, i % c);
            for phase in 0..4 {
                let (py, px) = (phase / 2, phase % 2);
                let src = &y[((s * 4 + phase) * c + ch) * hw..][..hw];
                for a in 0..h {
                    let row = (2 * a + py) * ow;
                    for (bb, &v) in src[a * w..(a + 1) * w].iter().enumerate() {
                        let k = row + 2 * bb + px;
                        p.out[k].write(self.apply(v, p.d, p.noise[k], p.bias));
                    }
                }
            }
        });
        Ok((out, Shape::from((b, c, 2 * h, 2 * w))))
    }
}
