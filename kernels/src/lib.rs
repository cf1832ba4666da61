//! Fast CPU kernels for candle, forward and backward.
//!
//! [`conv2d`] is a drop-in for `Tensor::conv2d` (groups = 1, dilation = 1) that, on the CPU in
//! f32, runs as a candle custom op built on im2col + one GEMM per group of images, with the GEMM
//! laid out so that its large dimension is the number of output pixels (see [`cpu`] for why), and
//! a backward pass made of two GEMMs (kernel gradient `dy·colᵀ`, input gradient `Wᵀ·dy` + col2im)
//! instead of candle's transposed convolution. On CPU in f16/bf16 it computes in f32 and rounds
//! back; on other devices (CUDA, Metal) it calls candle's own `conv2d`, so nothing changes there.
//!
//! [`Conv2d`] is the matching `Module` (weight, optional bias, stride, padding), used by every
//! model of the workspace: the server's generators and the client's encoder. [`BatchNorm2d`] is a
//! training-mode batch norm (optionally fused with its ReLU) in one pass forward and two backward.

pub mod alloc;
pub mod batch_norm;
pub mod cpu;
pub mod device;
pub mod fused;
mod op;

pub use alloc::tune_allocator;
pub use batch_norm::BatchNorm2d;

use candle_core::{DType, Device, Module, Result, Shape, Tensor};
use cpu::Geometry;
use op::{Arg, CpuOp, Custom};

/// `x` `[B, C_in, H, W]` ⊛ `w` `[C_out, C_in, kh, kw]` with the given stride and zero padding
/// (the same on both spatial dims) → `[B, C_out, H_out, W_out]`.
///
/// Errors name the mismatch (rank, channels, kernel larger than the padded input, stride 0,
/// dtype or device mismatch).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    conv2d_bias(x, w, None, stride, padding)
}

/// [`conv2d`] plus a per-channel `bias` `[C_out]`, added inside the op (one pass less than a
/// separate broadcast add).
pub fn conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let geo = geometry(x.shape(), w.shape(), stride, padding)?;
    if let Some(b) = bias {
        if b.dims() != [geo.cout] {
            candle_core::bail!(
                "conv2d: bias has shape {:?}, expected [{}]",
                b.dims(),
                geo.cout
            );
        }
    }
    if x.dtype() != w.dtype() {
        candle_core::bail!(
            "conv2d: input dtype {:?} and kernel dtype {:?} differ",
            x.dtype(),
            w.dtype()
        );
    }
    if !x.device().same_device(w.device()) {
        candle_core::bail!("conv2d: input and kernel are on different devices");
    }
    match (x.device(), x.dtype()) {
        (Device::Cpu, DType::F32) => {
            if geo.batch == 0 || geo.cout == 0 {
                let y = Tensor::zeros(
                    (geo.batch, geo.cout, geo.ho, geo.wo),
                    DType::F32,
                    x.device(),
                )?;
                return add_bias_composed(y, bias);
            }
            let op = Custom(Conv2dOp { stride, padding });
            let (x, w) = (x.contiguous()?, w.contiguous()?);
            match bias {
                Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
                None => x.apply_op2(&w, op),
            }
        }
        (Device::Cpu, DType::F16 | DType::BF16) => {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let b = bias.map(f).transpose()?;
            conv2d_bias(&f(x)?, &f(w)?, b.as_ref(), stride, padding)?.to_dtype(x.dtype())
        }
        _ => add_bias_composed(x.conv2d(w, padding, stride, 1, 1)?, bias),
    }
}

/// `x` `[B, C_in, H, W]` transposed-convolved with `w` `[C_in, C_out, kh, kw]` (PyTorch's
/// `conv_transpose2d` layout) at `stride`, no padding → `[B, C_out, (H−1)·s + kh, (W−1)·s + kw]`,
/// `y[j] = Σᵢ x[i]·w[j − s·i]` per axis: the input gradient of the stride-`s` conv, so on the
/// CPU in f32 it is one GEMM `wᵀ·x` and a col2im (a zero-inserted input would cost `s²` times the
/// multiply-adds). Elsewhere it is candle's `conv_transpose2d`.
pub fn conv_transpose2d(x: &Tensor, w: &Tensor, stride: usize) -> Result<Tensor> {
    let (b, cin, h, wd) = x.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "conv_transpose2d: input must be [B, C, H, W], got {:?}",
            x.dims()
        ))
    })?;
    let (kcin, cout, kh, kw) = w.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "conv_transpose2d: kernel must be [C_in, C_out, kh, kw], got {:?}",
            w.dims()
        ))
    })?;
    if stride == 0 {
        candle_core::bail!("conv_transpose2d: stride must be at least 1");
    }
    if kcin != cin || kh == 0 || kw == 0 {
        candle_core::bail!(
            "conv_transpose2d: input has {cin} channels but the kernel {:?} expects {kcin}",
            w.dims()
        );
    }
    if h == 0 || wd == 0 {
        candle_core::bail!("conv_transpose2d: empty input {:?}", x.dims());
    }
    if x.dtype() != w.dtype() || !x.device().same_device(w.device()) {
        candle_core::bail!("conv_transpose2d: input and kernel differ in dtype or device");
    }
    let out = (b, cout, (h - 1) * stride + kh, (wd - 1) * stride + kw);
    match (x.device(), x.dtype()) {
        (Device::Cpu, DType::F32) if b > 0 && cout > 0 => x.contiguous()?.apply_op2_no_bwd(
            &w.contiguous()?,
            &Custom(Conv2dInputGrad {
                stride,
                padding: 0,
                x_shape: Shape::from(out),
            }),
        ),
        (Device::Cpu, DType::F32) => Tensor::zeros(out, DType::F32, x.device()),
        (Device::Cpu, DType::F16 | DType::BF16) => {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            conv_transpose2d(&f(x)?, &f(w)?, stride)?.to_dtype(x.dtype())
        }
        _ => x.conv_transpose2d(w, 0, 0, stride, 1),
    }
}

fn add_bias_composed(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
        None => Ok(y),
    }
}

fn geometry(x: &Shape, w: &Shape, stride: usize, padding: usize) -> Result<Geometry> {
    let xd = x.dims4().map_err(|_| {
        candle_core::Error::Msg(format!("conv2d: input must be [B, C, H, W], got {x:?}"))
    })?;
    let wd = w.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "conv2d: kernel must be [C_out, C_in, kh, kw], got {w:?}"
        ))
    })?;
    if stride == 0 {
        candle_core::bail!("conv2d: stride must be at least 1");
    }
    if xd.1 != wd.1 {
        candle_core::bail!(
            "conv2d: input has {} channels but the kernel {w:?} expects {}",
            xd.1,
            wd.1
        );
    }
    Geometry::new(xd, wd, stride, padding).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "conv2d: kernel {}x{} does not fit input {}x{} with padding {padding}",
            wd.2, wd.3, xd.2, xd.3
        ))
    })
}

/// Forward convolution (arguments: input, kernel, and bias for the three-operand form).
struct Conv2dOp {
    stride: usize,
    padding: usize,
}

impl CpuOp<2> for Conv2dOp {
    const NAME: &'static str = "genrep-conv2d";
    const ARGS: [&'static str; 2] = ["conv2d: input", "conv2d: kernel"];

    fn forward(&self, [x, w]: [Arg; 2]) -> Result<(Vec<f32>, Shape)> {
        self.forward_cpu(x, w, None)
    }

    fn backward(
        &self,
        [x, w]: [&Tensor; 2],
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 2]> {
        let (dx, dw) = self.grads(x, w, grad)?;
        Ok([dx, dw])
    }
}

impl CpuOp<3> for Conv2dOp {
    const NAME: &'static str = "genrep-conv2d-bias";
    const ARGS: [&'static str; 3] = ["conv2d: input", "conv2d: kernel", "conv2d: bias"];

    fn forward(&self, [x, w, b]: [Arg; 3]) -> Result<(Vec<f32>, Shape)> {
        self.forward_cpu(x, w, Some(b))
    }

    fn backward(
        &self,
        [x, w, b]: [&Tensor; 3],
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; 3]> {
        let (dx, dw) = self.grads(x, w, grad)?;
        let db = if b.track_op() {
            Some(grad.sum((0, 2, 3))?)
        } else {
            None
        };
        Ok([dx, dw, db])
    }
}

impl Conv2dOp {
    fn forward_cpu(&self, x: Arg, w: Arg, bias: Option<Arg>) -> Result<(Vec<f32>, Shape)> {
        let geo = geometry(x.shape, w.shape, self.stride, self.padding)?;
        let out = cpu::conv2d_forward(x.data, w.data, bias.map(|b| b.data), &geo);
        Ok((out, Shape::from((geo.batch, geo.cout, geo.ho, geo.wo))))
    }

    /// Input and kernel gradients, each only if its tensor takes part in the graph (the input
    /// image of the first layer needs none, which saves a GEMM).
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (stride, padding) = (self.stride, self.padding);
        let dx = x
            .track_op()
            .then(|| {
                let x_shape = x.shape().clone();
                grad.apply_op2_no_bwd(
                    w,
                    &Custom(Conv2dInputGrad {
                        stride,
                        padding,
                        x_shape,
                    }),
                )
            })
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| {
                let w_shape = w.shape().clone();
                x.apply_op2_no_bwd(
                    &grad,
                    &Custom(Conv2dKernelGrad {
                        stride,
                        padding,
                        w_shape,
                    }),
                )
            })
            .transpose()?;
        Ok((dx, dw))
    }
}

/// `dy`, kernel → input gradient.
struct Conv2dInputGrad {
    stride: usize,
    padding: usize,
    x_shape: Shape,
}

impl CpuOp<2> for Conv2dInputGrad {
    const NAME: &'static str = "genrep-conv2d-input-grad";
    const ARGS: [&'static str; 2] = ["conv2d: gradient", "conv2d: kernel"];

    fn forward(&self, [dy, w]: [Arg; 2]) -> Result<(Vec<f32>, Shape)> {
        let geo = geometry(&self.x_shape, w.shape, self.stride, self.padding)?;
        check_grad_shape(&geo, dy.shape)?;
        let dx = cpu::conv2d_backward_input(dy.data, w.data, &geo);
        Ok((dx, self.x_shape.clone()))
    }
}

/// Input, `dy` → kernel gradient.
struct Conv2dKernelGrad {
    stride: usize,
    padding: usize,
    w_shape: Shape,
}

impl CpuOp<2> for Conv2dKernelGrad {
    const NAME: &'static str = "genrep-conv2d-kernel-grad";
    const ARGS: [&'static str; 2] = ["conv2d: input", "conv2d: gradient"];

    fn forward(&self, [x, dy]: [Arg; 2]) -> Result<(Vec<f32>, Shape)> {
        let geo = geometry(x.shape, &self.w_shape, self.stride, self.padding)?;
        check_grad_shape(&geo, dy.shape)?;
        let dw = cpu::conv2d_backward_kernel(x.data, dy.data, &geo);
        Ok((dw, self.w_shape.clone()))
    }
}

fn check_grad_shape(geo: &Geometry, dy: &Shape) -> Result<()> {
    let expected = [geo.batch, geo.cout, geo.ho, geo.wo];
    if dy.dims() != expected {
        candle_core::bail!("conv2d backward: gradient shape {dy:?}, expected {expected:?}");
    }
    Ok(())
}

/// A 2-D convolution layer over [`conv2d`]: weight `[C_out, C_in, k, k]`, optional bias
/// `[C_out]`, square stride and zero padding.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: usize) -> Self {
        Self {
            weight,
            bias,
            stride,
            padding,
        }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    pub fn padding(&self) -> usize {
        self.padding
    }

    /// Keeps only the first `n` output channels (a layer whose later outputs are never used).
    pub fn narrow_out(&self, n: usize) -> Result<Self> {
        Ok(Self {
            weight: self.weight.narrow(0, 0, n)?.contiguous()?,
            bias: match &self.bias {
                Some(b) => Some(b.narrow(0, 0, n)?.contiguous()?),
                None => None,
            },
            ..*self
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d_bias(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
        )
    }
}
