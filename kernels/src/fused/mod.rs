//! Element-wise NCHW ops that candle composes from several passes, as one pass each on the CPU:
//! nearest ×2 upsampling, a per-sample per-channel affine map with optional ReLU (conditional
//! batch norm), and a residual add of a channel-truncated, optionally upsampled skip path (BigGAN's
//! blocks); StyleGAN2's modulated-conv epilogues are in [`epilogue`].
//!
//! A generator block at 128×128 moves hundreds of megabytes through such ops per batch; composed
//! from candle ops each one is a separate pass that allocates its output (candle's nearest
//! upsampling is also single-threaded with per-element index arithmetic). Each op here is one
//! parallel pass. Every op has a backward pass (built from candle ops: these are not the hot path
//! of any training loop here), and falls back to the composed candle ops off the CPU or for
//! dtypes other than f32.

mod epilogue;

pub use epilogue::{modulated_epilogue, modulated_epilogue_fir_up, modulated_epilogue_up};

use crate::op::{Arg, CpuOp, Custom};
use candle_core::{DType, Device, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

pub(crate) fn on_cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32)
}

/// Writes row `src` (width `w`) twice widened into `dst` (width `2w`).
#[inline]
fn widen(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    assert_eq!(dst.len(), 2 * src.len());
    for (d, &s) in dst.chunks_exact_mut(2).zip(src) {
        d[0].write(s);
        d[1].write(s);
    }
}

/// Nearest-neighbour ×2 upsampling of `[B, C, H, W]` → `[B, C, 2H, 2W]` (what
/// `upsample_nearest2d(2H, 2W)` computes).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if !on_cpu_f32(&[x]) {
        return x.upsample_nearest2d(2 * h, 2 * w);
    }
    x.contiguous()?.apply_op1(Custom(Upsample2x))
}

struct Upsample2x;

impl CpuOp<1> for Upsample2x {
    const NAME: &'static str = "genrep-upsample-nearest2x";
    const ARGS: [&'static str; 1] = ["upsample"];

    fn forward(&self, [x]: [Arg; 1]) -> Result<(Vec<f32>, Shape)> {
        let (b, c, h, w) = x.shape.dims4()?;
        let x = x.data;
        let y = crate::cpu::output_buffer(x.len() * 4, |y| {
            if w > 0 && h > 0 {
                y.par_chunks_mut(4 * h * w)
                    .zip(x.par_chunks(h * w))
                    .for_each(|(yp, xp)| {
                        assert_eq!(yp.len(), 4 * xp.len());
                        for (rows, src) in yp.chunks_exact_mut(4 * w).zip(xp.chunks_exact(w)) {
                            let (top, bottom) = rows.split_at_mut(2 * w);
                            widen(src, top);
                            // SAFETY: `widen` wrote all of `top`.
                            crate::cpu::copy_uninit(bottom, unsafe {
                                crate::cpu::assume_init_mut(top)
                            });
                        }
                    });
            }
            // SAFETY: each plane of 4·h·w outputs is h rows of two widened copies of its input
            // row (or the buffer is empty).
            unsafe { crate::cpu::init_all(y) }
        });
        Ok((y, Shape::from((b, c, 2 * h, 2 * w))))
    }

    fn backward(
        &self,
        [x]: [&Tensor; 1],
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 1]> {
        Ok([Some(pool_sum2x(grad, x.dims())?)])
    }
}

/// The adjoint of nearest ×2 upsampling: 2×2 sums of `[B, C, 2H, 2W]` → `[B, C, H, W]`.
fn pool_sum2x(g: &Tensor, low: &[usize]) -> Result<Tensor> {
    let (b, c, h, w) = (low[0], low[1], low[2], low[3]);
    g.reshape((b, c, h, 2, w, 2))?.sum(5)?.sum(3)
}

/// `y = x · a + b` per sample and channel (`a`, `b` of shape `[B, C]` or `[C]`), followed by a
/// ReLU if `relu`: an evaluation-mode (conditional) batch norm with its activation.
pub fn scale_shift(x: &Tensor, a: &Tensor, b: &Tensor, relu: bool) -> Result<Tensor> {
    let (bs, c, _, _) = x.dims4()?;
    for (name, t) in [("scale", a), ("shift", b)] {
        let ok = t.dims() == [c] || t.dims() == [bs, c];
        if !ok {
            candle_core::bail!(
                "scale_shift: {name} has shape {:?}, expected [{c}] or [{bs}, {c}]",
                t.dims()
            );
        }
    }
    let (a, b) = (a.broadcast_as((bs, c))?, b.broadcast_as((bs, c))?);
    if !on_cpu_f32(&[x, &a, &b]) {
        let ch = |t: &Tensor| t.reshape((bs, c, 1, 1));
        let y = x.broadcast_mul(&ch(&a)?)?.broadcast_add(&ch(&b)?)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    x.contiguous()?.apply_op3(
        &a.contiguous()?,
        &b.contiguous()?,
        Custom(ScaleShift { relu }),
    )
}

struct ScaleShift {
    relu: bool,
}

impl CpuOp<3> for ScaleShift {
    const NAME: &'static str = "genrep-scale-shift";
    const ARGS: [&'static str; 3] = ["scale_shift"; 3];

    fn forward(&self, [xa, a, b]: [Arg; 3]) -> Result<(Vec<f32>, Shape)> {
        let (x, a, b) = (xa.data, a.data, b.data);
        let (_, _, h, w) = xa.shape.dims4()?;
        let hw = (h * w).max(1);
        let relu = self.relu;
        let y = crate::cpu::output_buffer(x.len(), |y| {
            y.par_chunks_mut(hw)
                .zip(x.par_chunks(hw))
                .enumerate()
                .for_each(|(i, (yo, xi))| {
                    assert_eq!(yo.len(), xi.len());
                    let (ai, bi) = (a[i], b[i]);
                    if relu {
                        for (o, &v) in yo.iter_mut().zip(xi) {
                            o.write((v * ai + bi).max(0.0));
                        }
                    } else {
                        for (o, &v) in yo.iter_mut().zip(xi) {
                            o.write(v * ai + bi);
                        }
                    }
                });
            // SAFETY: every chunk was written element by element above (equal lengths).
            unsafe { crate::cpu::init_all(y) }
        });
        Ok((y, xa.shape.clone()))
    }

    fn backward(
        &self,
        [x, a, _b]: [&Tensor; 3],
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let g = if self.relu {
            (grad * res.gt(0f32)?.to_dtype(grad.dtype())?)?
        } else {
            grad.clone()
        };
        let (bs, c, _, _) = x.dims4()?;
        let dx = g.broadcast_mul(&a.reshape((bs, c, 1, 1))?)?;
        let da = (&g * x)?.sum((2, 3))?;
        let db = g.sum((2, 3))?;
        Ok([Some(dx), Some(da), Some(db)])
    }
}

/// `h + skip`, where `skip` is the first `C_h` channels of `x` (`x` may have more), upsampled
/// ×2 (nearest) when `upsample`: the residual join of a BigGAN-style block, without
/// materialising the truncated or upsampled skip tensor.
pub fn add_skip(h: &Tensor, x: &Tensor, upsample: bool) -> Result<Tensor> {
    let (bh, ch, hh, wh) = h.dims4()?;
    let (bx, cx, hx, wx) = x.dims4()?;
    let f = if upsample { 2 } else { 1 };
    if bh != bx || cx < ch || hh != f * hx || wh != f * wx {
        candle_core::bail!(
            "add_skip: output {:?} cannot take the skip path {:?}{}",
            h.dims(),
            x.dims(),
            if upsample { " upsampled x2" } else { "" }
        );
    }
    if !on_cpu_f32(&[h, x]) {
        let mut s = x.narrow(1, 0, ch)?;
        if upsample {
            s = s.upsample_nearest2d(hh, wh)?;
        }
        return h + s;
    }
    h.contiguous()?
        .apply_op2(&x.contiguous()?, Custom(AddSkip { upsample }))
}

struct AddSkip {
    upsample: bool,
}

impl CpuOp<2> for AddSkip {
    const NAME: &'static str = "genrep-add-skip";
    const ARGS: [&'static str; 2] = ["add_skip"; 2];

    fn forward(&self, [ha, xa]: [Arg; 2]) -> Result<(Vec<f32>, Shape)> {
        let (h, x) = (ha.data, xa.data);
        let (_, ch, hh, wh) = ha.shape.dims4()?;
        let (_, cx, hx, wx) = xa.shape.dims4()?;
        let (ph, px) = ((hh * wh).max(1), (hx * wx).max(1));
        let up = self.upsample;
        let y = crate::cpu::output_buffer(h.len(), |y| {
            y.par_chunks_mut(ph)
                .zip(h.par_chunks(ph))
                .enumerate()
                .for_each(|(i, (yo, hi))| {
                    // Every element is written below: the shapes are checked by `add_skip`
                    // (x has ≥ as many channels, the same or half the spatial size).
                    assert_eq!(yo.len(), hi.len());
                    let (bi, c) = (i / ch, i % ch);
                    let xp = &x[(bi * cx + c) * px..][..px];
                    if !up {
                        assert_eq!(xp.len(), yo.len());
                        for ((o, &a), &s) in yo.iter_mut().zip(hi).zip(xp) {
                            o.write(a + s);
                        }
                        return;
                    }
                    assert!(wh == 2 * wx && yo.len() == 4 * px);
                    for (r, (orow, hrow)) in
                        yo.chunks_exact_mut(wh).zip(hi.chunks_exact(wh)).enumerate()
                    {
                        let src = &xp[(r / 2) * wx..][..wx];
                        for ((o, a), &s) in
                            orow.chunks_exact_mut(2).zip(hrow.chunks_exact(2)).zip(src)
                        {
                            o[0].write(a[0] + s);
                            o[1].write(a[1] + s);
                        }
                    }
                });
            // SAFETY: every plane was written in full above (its lengths asserted).
            unsafe { crate::cpu::init_all(y) }
        });
        Ok((y, ha.shape.clone()))
    }

    fn backward(
        &self,
        [h, x]: [&Tensor; 2],
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        let (_, ch, _, _) = h.dims4()?;
        let (bx, cx, hx, wx) = x.dims4()?;
        let gs = if self.upsample {
            pool_sum2x(grad, &[bx, ch, hx, wx])?
        } else {
            grad.clone()
        };
        let dx = if cx > ch {
            let rest = Tensor::zeros((bx, cx - ch, hx, wx), gs.dtype(), gs.device())?;
            Tensor::cat(&[&gs, &rest], 1)?
        } else {
            gs
        };
        Ok([Some(grad.clone()), Some(dx)])
    }
}
