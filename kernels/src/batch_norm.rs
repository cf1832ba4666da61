//! Batch normalisation over NCHW (optionally fused with the ReLU that follows it): one pass for
//! the statistics and one for the output in training mode, two passes backward.
//!
//! Composed from candle's element-wise ops, a training-mode batch norm is a transpose copy, two
//! means, a subtraction, a square, a division and two broadcasts forward, and roughly three times
//! as many passes backward, each allocating a tensor the size of the activation: on CPU that cost
//! more than the convolutions it sits between. Here the forward pass is one custom op whose
//! backward pass is another, with the analytic gradient
//! `dx = γ·σ⁻¹·(dy − mean(dy) − x̂·mean(dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`.
//! Statistics are summed in f64. Off the CPU (and for dtypes other than f32) the same maths runs
//! as candle ops.

use crate::op::{Arg, CpuOp, Custom};
use candle_core::{DType, Device, ModuleT, Result, Shape, Tensor, Var};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Batch normalisation of `[B, C, …]` over every dim but the channel dim, with running
/// statistics for evaluation; parameter names and update rule are those of `candle_nn`'s
/// `BatchNorm` (and PyTorch's `BatchNorm2d`): `running = (1 − m)·running + m·batch`, the running
/// variance taking the unbiased batch variance.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    running_mean: Var,
    running_var: Var,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// `running_mean`/`running_var` must be variables (their values are updated in place in
    /// training mode); `weight`/`bias` are the affine parameters `[C]`.
    pub fn new(
        running_mean: &Tensor,
        running_var: &Tensor,
        weight: Tensor,
        bias: Tensor,
        eps: f64,
        momentum: f64,
    ) -> Result<Self> {
        let c = weight.dims1()?;
        for (name, t) in [
            ("running_mean", running_mean),
            ("running_var", running_var),
            ("bias", &bias),
        ] {
            if t.dims() != [c] {
                candle_core::bail!(
                    "batch norm: {name} has shape {:?}, expected [{c}]",
                    t.dims()
                );
            }
        }
        Ok(Self {
            running_mean: Var::from_tensor(running_mean)?,
            running_var: Var::from_tensor(running_var)?,
            weight,
            bias,
            eps,
            momentum,
        })
    }

    /// A layer over `c` channels whose tensors live in `vb` under the names `candle_nn` uses
    /// (`running_mean`, `running_var`, `weight`, `bias`), initialised to 0, 1, 1, 0.
    pub fn load(c: usize, eps: f64, momentum: f64, vb: candle_nn::VarBuilder) -> Result<Self> {
        use candle_nn::Init::Const;
        let rm = vb.get_with_hints(c, "running_mean", Const(0.))?;
        let rv = vb.get_with_hints(c, "running_var", Const(1.))?;
        let w = vb.get_with_hints(c, "weight", Const(1.))?;
        let b = vb.get_with_hints(c, "bias", Const(0.))?;
        Self::new(&rm, &rv, w, b, eps, momentum)
    }

    /// `relu(bn(x))` in one pass (and one backward op).
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x, train, true)
    }

    fn run(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        if x.rank() < 2 || x.dim(1)? != c {
            candle_core::bail!(
                "batch norm over {c} channels got input of shape {:?}",
                x.dims()
            );
        }
        if !train {
            let shape = chan_shape(x.rank(), c);
            let inv = (self.running_var.as_detached_tensor() + self.eps)?
                .sqrt()?
                .recip()?;
            let a = (&self.weight * &inv)?;
            let b = (&self.bias - (&a * self.running_mean.as_detached_tensor())?)?;
            let y = x
                .broadcast_mul(&a.reshape(shape.as_slice())?.to_dtype(x.dtype())?)?
                .broadcast_add(&b.reshape(shape.as_slice())?.to_dtype(x.dtype())?)?;
            return if relu { y.relu() } else { Ok(y) };
        }
        let n = x.elem_count() / c.max(1);
        if n < 2 {
            candle_core::bail!(
                "batch norm in training mode needs more than one value per channel, got input {:?}",
                x.dims()
            );
        }
        let (y, mean, var) = if matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 {
            let saved = Arc::new(Mutex::new(None));
            let op = Custom(BnTrain {
                eps: self.eps,
                relu,
                saved: saved.clone(),
            });
            let y = x.contiguous()?.apply_op3(
                &self.weight.contiguous()?,
                &self.bias.contiguous()?,
                op,
            )?;
            let stats: Stats = saved
                .lock()
                .unwrap()
                .clone()
                .expect("forward saved its statistics");
            let dev = x.device();
            let mean = Tensor::from_vec(stats.mean.iter().map(|&m| m as f32).collect(), c, dev)?;
            let var = Tensor::from_vec(stats.var.iter().map(|&v| v as f32).collect(), c, dev)?;
            (y, mean, var)
        } else {
            composed_train(x, &self.weight, &self.bias, self.eps, relu)?
        };
        let m = self.momentum;
        let rm = ((self.running_mean.as_detached_tensor() * (1.0 - m))? + (mean * m)?)?;
        let unbiased = m * n as f64 / (n as f64 - 1.0);
        let rv = ((self.running_var.as_detached_tensor() * (1.0 - m))? + (var * unbiased)?)?;
        self.running_mean.set(&rm)?;
        self.running_var.set(&rv)?;
        Ok(y)
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x, train, false)
    }
}

fn chan_shape(rank: usize, c: usize) -> Vec<usize> {
    (0..rank).map(|i| if i == 1 { c } else { 1 }).collect()
}

/// Training-mode batch norm from candle ops (other devices and dtypes): `(y, mean, biased var)`.
fn composed_train(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = w.dim(0)?;
    let shape = chan_shape(x.rank(), c);
    let dims: Vec<usize> = (0..x.rank()).filter(|&i| i != 1).collect();
    let xf = x.to_dtype(DType::F32)?;
    let mean = xf.mean_keepdim(dims.as_slice())?;
    let xc = xf.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(dims.as_slice())?;
    let y = xc
        .broadcast_div(&(&var + eps)?.sqrt()?)?
        .broadcast_mul(&w.reshape(shape.as_slice())?)?
        .broadcast_add(&b.reshape(shape.as_slice())?)?;
    let y = if relu { y.relu()? } else { y }.to_dtype(x.dtype())?;
    Ok((y, mean.flatten_all()?.detach(), var.flatten_all()?.detach()))
}

/// Per-channel statistics of a forward pass (f64 sums), kept for the backward pass and for the
/// running-statistics update.
#[derive(Clone, Debug)]
struct Stats {
    mean: Vec<f64>,
    /// Biased (population) variance.
    var: Vec<f64>,
    /// `1 / sqrt(var + eps)`.
    inv_std: Vec<f64>,
    /// Per-channel shift (the channel's first value): centred values are computed as
    /// `(x − shift) − (mean − shift)`, exact where `x − mean` in f32 would not be.
    shift: Vec<f32>,
}

impl Stats {
    /// `(shift, mean − shift)` of channel `ch` in f32.
    fn centre(&self, ch: usize) -> (f32, f32) {
        (
            self.shift[ch],
            (self.mean[ch] - self.shift[ch] as f64) as f32,
        )
    }
}

/// `(batch, channels, inner)` of a `[B, C, …]` layout.
fn bci(shape: &Shape) -> (usize, usize, usize) {
    let d = shape.dims();
    (d[0], d[1], d[2..].iter().product())
}

/// Per-channel `(Σ f(i), Σ g(i))` over the `(b, c, inner)` blocks of channel `c`, in f64.
fn channel_sums(
    (b, c, inner): (usize, usize, usize),
    f: impl Fn(usize, usize) -> (f64, f64) + Sync,
) -> Vec<(f64, f64)> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut acc = (0.0, 0.0);
            for bi in 0..b {
                let (s1, s2) = f((bi * c + ch) * inner, ch);
                acc.0 += s1;
                acc.1 += s2;
            }
            acc
        })
        .collect()
}

/// Lanes of the f32 partial sums: independent accumulators let the compiler vectorise a
/// reduction that IEEE ordering would otherwise keep sequential.
const LANES: usize = 16;

/// `(Σ f(v).0, Σ f(v).1)` over `xs`: f32 lanes within the block, f64 for the total.
#[inline]
fn lane_sums(xs: &[f32], f: impl Fn(f32) -> (f32, f32)) -> (f64, f64) {
    let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let (p, q) = f(c[i]);
            a[i] += p;
            b[i] += q;
        }
    }
    let (mut sa, mut sb) = (0f64, 0f64);
    for i in 0..LANES {
        sa += a[i] as f64;
        sb += b[i] as f64;
    }
    for &v in rest {
        let (p, q) = f(v);
        sa += p as f64;
        sb += q as f64;
    }
    (sa, sb)
}

/// [`lane_sums`] over three aligned slices.
#[inline]
fn lane_sums3(
    xs: &[f32],
    ys: &[f32],
    zs: &[f32],
    f: impl Fn(f32, f32, f32) -> (f32, f32),
) -> (f64, f64) {
    let (mut a, mut b) = ([0f32; LANES], [0f32; LANES]);
    let n = xs.len() / LANES * LANES;
    for ((cx, cy), cz) in xs[..n]
        .chunks_exact(LANES)
        .zip(ys[..n].chunks_exact(LANES))
        .zip(zs[..n].chunks_exact(LANES))
    {
        for i in 0..LANES {
            let (p, q) = f(cx[i], cy[i], cz[i]);
            a[i] += p;
            b[i] += q;
        }
    }
    let (mut sa, mut sb) = (0f64, 0f64);
    for i in 0..LANES {
        sa += a[i] as f64;
        sb += b[i] as f64;
    }
    for i in n..xs.len() {
        let (p, q) = f(xs[i], ys[i], zs[i]);
        sa += p as f64;
        sb += q as f64;
    }
    (sa, sb)
}

struct BnTrain {
    eps: f64,
    relu: bool,
    saved: Arc<Mutex<Option<Stats>>>,
}

impl CpuOp<3> for BnTrain {
    const NAME: &'static str = "genrep-batch-norm-train";
    const ARGS: [&'static str; 3] = [
        "batch norm: input",
        "batch norm: weight",
        "batch norm: bias",
    ];

    fn forward(&self, [xa, gamma, beta]: [Arg; 3]) -> Result<(Vec<f32>, Shape)> {
        let (x, gamma, beta) = (xa.data, gamma.data, beta.data);
        let (b, c, inner) = bci(xa.shape);
        let n = (b * inner) as f64;
        // Sums of (x − shift) with shift = the channel's first value: the variance then does not
        // cancel catastrophically when the mean is large against the spread.
        let shift: Vec<f32> = (0..c)
            .map(|ch| x.get(ch * inner).copied().unwrap_or(0.0))
            .collect();
        let sums = channel_sums((b, c, inner), |off, ch| {
            let sh = shift[ch];
            lane_sums(&x[off..off + inner], |v| (v - sh, (v - sh) * (v - sh)))
        });
        let mean: Vec<f64> = sums
            .iter()
            .zip(&shift)
            .map(|(s, &sh)| sh as f64 + s.0 / n)
            .collect();
        let var: Vec<f64> = sums
            .iter()
            .map(|s| (s.1 / n - (s.0 / n) * (s.0 / n)).max(0.0))
            .collect();
        let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
        let stats = Stats {
            mean,
            var,
            inv_std: inv_std.clone(),
            shift,
        };
        let relu = self.relu;
        let y = crate::cpu::output_buffer(x.len(), |y| {
            y.par_chunks_mut(inner.max(1))
                .zip(x.par_chunks(inner.max(1)))
                .enumerate()
                .for_each(|(blk, (yo, xi))| {
                    assert_eq!(yo.len(), xi.len());
                    let ch = blk % c;
                    let a = (gamma[ch] as f64 * inv_std[ch]) as f32;
                    let (sh, dm) = stats.centre(ch);
                    let bt = beta[ch];
                    for (o, &v) in yo.iter_mut().zip(xi) {
                        let t = ((v - sh) - dm) * a + bt;
                        o.write(if relu { t.max(0.0) } else { t });
                    }
                });
            // SAFETY: every chunk was written element by element above (equal lengths).
            unsafe { crate::cpu::init_all(y) }
        });
        *self.saved.lock().unwrap() = Some(stats);
        Ok((y, xa.shape.clone()))
    }

    fn backward(
        &self,
        [x, gamma, _beta]: [&Tensor; 3],
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        // The statistics were stashed by this op's forward pass; recompute them only if the op
        // is replayed without one (cannot happen through `BatchNorm2d`).
        let stats = self.saved.lock().unwrap().clone();
        let stats = match stats {
            Some(s) => s,
            None => candle_core::bail!("batch norm backward without a forward pass"),
        };
        let param_grads = Arc::new(Mutex::new(None));
        let dx = x.apply_op3_no_bwd(
            &grad.contiguous()?,
            res,
            &Custom(BnBackward {
                relu: self.relu,
                stats,
                gamma: gamma.to_vec1::<f32>()?,
                param_grads: param_grads.clone(),
            }),
        )?;
        let (dg, db): (Vec<f32>, Vec<f32>) = param_grads.lock().unwrap().take().expect("set");
        let dev = x.device();
        let c = dg.len();
        Ok([
            Some(dx),
            Some(Tensor::from_vec(dg, c, dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ])
    }
}

/// `(x, dy, y)` → `dx`; stashes `(dγ, dβ)`.
struct BnBackward {
    relu: bool,
    stats: Stats,
    gamma: Vec<f32>,
    param_grads: Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>,
}

impl CpuOp<3> for BnBackward {
    const NAME: &'static str = "genrep-batch-norm-backward";
    const ARGS: [&'static str; 3] = [
        "batch norm: input",
        "batch norm: gradient",
        "batch norm: output",
    ];

    fn forward(&self, [xa, dy, y]: [Arg; 3]) -> Result<(Vec<f32>, Shape)> {
        let (x, dy, y) = (xa.data, dy.data, y.data);
        let (b, c, inner) = bci(xa.shape);
        let n = (b * inner) as f64;
        let relu = self.relu;
        let st = &self.stats;
        // Σ dy and Σ dy·(x − mean) per channel, with dy masked by the ReLU (y > 0).
        let sums = channel_sums((b, c, inner), |off, ch| {
            let (sh, dm) = st.centre(ch);
            let r = off..off + inner;
            lane_sums3(&dy[r.clone()], &x[r.clone()], &y[r], |g, xv, yv| {
                let g = if relu && yv <= 0.0 { 0.0 } else { g };
                (g, g * ((xv - sh) - dm))
            })
        });
        let mut dg = Vec::with_capacity(c);
        let mut db = Vec::with_capacity(c);
        let mut coef = Vec::with_capacity(c);
        for ch in 0..c {
            let (s, q) = sums[ch];
            let inv = st.inv_std[ch];
            // dγ = Σ dy·x̂, dβ = Σ dy;  dx = γσ⁻¹ (dy − dβ/n − x̂·dγ/n)
            let dgamma = q * inv;
            dg.push(dgamma as f32);
            db.push(s as f32);
            let k = self.gamma[ch] as f64 * inv;
            coef.push((k, s / n, dgamma * inv / n));
        }
        let dx = crate::cpu::output_buffer(x.len(), |dx| {
            dx.par_chunks_mut(inner.max(1))
                .enumerate()
                .for_each(|(blk, out)| {
                    let ch = blk % c;
                    let (k, mdy, mq) = coef[ch];
                    let (k, mdy, mq) = (k as f32, mdy as f32, mq as f32);
                    let (sh, dm) = st.centre(ch);
                    let r = blk * inner..(blk + 1) * inner;
                    let (dyb, xb, yb) = (&dy[r.clone()], &x[r.clone()], &y[r]);
                    assert_eq!(out.len(), dyb.len());
                    for (((o, &g), &xv), &yv) in out.iter_mut().zip(dyb).zip(xb).zip(yb) {
                        let g = if relu && yv <= 0.0 { 0.0 } else { g };
                        o.write(k * (g - mdy - ((xv - sh) - dm) * mq));
                    }
                });
            // SAFETY: every chunk was written element by element above (equal lengths).
            unsafe { crate::cpu::init_all(dx) }
        });
        *self.param_grads.lock().unwrap() = Some((dg, db));
        Ok((dx, xa.shape.clone()))
    }
}
