//! The candle `CustomOp1/2/3` plumbing shared by the crate's CPU ops, written once.
//!
//! Every op here runs only on contiguous CPU f32 tensors (the public functions route everything
//! else to composed candle ops first), so each op is an f32 computation over slices plus its
//! name, operand names and, optionally, a backward pass. [`CpuOp`] states exactly that, and
//! [`Custom`] turns it into the candle trait of its arity. There is no CUDA or Metal forward:
//! the candle traits' defaults (an error naming the op) stay, as no op is applied off the CPU.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// One operand of a [`CpuOp`]: its contiguous f32 values and its shape.
#[derive(Clone, Copy)]
pub(crate) struct Arg<'a> {
    pub data: &'a [f32],
    pub shape: &'a Shape,
}

/// A CPU f32 op over `N` tensors; wrap it in [`Custom`] to apply it.
pub(crate) trait CpuOp<const N: usize> {
    /// The name candle reports for the op.
    const NAME: &'static str;

    /// How errors name each operand that is not contiguous f32.
    const ARGS: [&'static str; N];

    /// The output values and shape.
    fn forward(&self, args: [Arg<'_>; N]) -> Result<(Vec<f32>, Shape)>;

    /// The gradients of the operands given the result `res` and its gradient `grad`; by default
    /// the error candle's traits give for an op without one.
    fn backward(
        &self,
        args: [&Tensor; N],
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<[Option<Tensor>; N]> {
        let _ = (args, res, grad);
        Err(candle_core::Error::BackwardNotSupported { op: Self::NAME })
    }
}

/// A [`CpuOp`] as candle's custom op of the same arity. The orphan rule forbids implementing
/// candle's traits for every `T: CpuOp<N>` directly, hence this wrapper.
pub(crate) struct Custom<T>(pub T);

/// The f32 slice a contiguous layout covers; `what` names the operand in errors.
fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        other => candle_core::bail!("{what} must be f32, got {:?}", other.dtype()),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// Checks and slices every operand, first to last, then runs `op`.
fn cpu_fwd<T: CpuOp<N>, const N: usize>(
    op: &T,
    operands: [(&CpuStorage, &Layout); N],
) -> Result<(CpuStorage, Shape)> {
    let args = operands
        .iter()
        .zip(T::ARGS)
        .map(|(&(s, l), what)| {
            Ok(Arg {
                data: f32_slice(s, l, what)?,
                shape: l.shape(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let args: [Arg; N] = args
        .try_into()
        .unwrap_or_else(|_| unreachable!("one argument per operand"));
    let (out, shape) = op.forward(args)?;
    Ok((CpuStorage::F32(out), shape))
}

impl<T: CpuOp<1>> CustomOp1 for Custom<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_fwd(&self.0, [(s, l)])
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [d] = self.0.backward([arg], res, grad)?;
        Ok(d)
    }
}

impl<T: CpuOp<2>> CustomOp2 for Custom<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_fwd(&self.0, [(s1, l1), (s2, l2)])
    }

    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [d1, d2] = self.0.backward([a1, a2], res, grad)?;
        Ok((d1, d2))
    }
}

impl<T: CpuOp<3>> CustomOp3 for Custom<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_fwd(&self.0, [(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        a3: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [d1, d2, d3] = self.0.backward([a1, a2, a3], res, grad)?;
        Ok((d1, d2, d3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Element-wise `a + b`, with no backward pass.
    struct Add;

    impl CpuOp<2> for Add {
        const NAME: &'static str = "test-add";
        const ARGS: [&'static str; 2] = ["add: a", "add: b"];

        fn forward(&self, [a, b]: [Arg; 2]) -> Result<(Vec<f32>, Shape)> {
            let y = a.data.iter().zip(b.data).map(|(x, y)| x + y).collect();
            Ok((y, a.shape.clone()))
        }
    }

    fn err(r: Result<Tensor>) -> String {
        r.expect_err("the op should fail").to_string()
    }

    #[test]
    fn operands_are_checked_and_named() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 6., &dev)?.reshape((2, 3))?;
        let b = Tensor::ones((2, 3), DType::F32, &dev)?;
        let y = a.apply_op2_no_bwd(&b, &Custom(Add))?;
        assert_eq!(y.to_vec2::<f32>()?, [[1., 2., 3.], [4., 5., 6.]]);

        // The slice starts at the layout's offset.
        let tail = Tensor::arange(0f32, 8., &dev)?
            .narrow(0, 2, 6)?
            .reshape((2, 3))?;
        let y = tail.apply_op2_no_bwd(&b, &Custom(Add))?;
        assert_eq!(y.to_vec2::<f32>()?, [[3., 4., 5.], [6., 7., 8.]]);

        let e = err(a.apply_op2_no_bwd(&b.to_dtype(DType::F64)?, &Custom(Add)));
        assert!(e.contains("add: b must be f32, got F64"), "{e}");
        let e = err(a.t()?.apply_op2_no_bwd(&b.t()?, &Custom(Add)));
        assert!(e.contains("add: a must be contiguous"), "{e}");
        Ok(())
    }

    #[test]
    fn default_backward_is_candles_error() -> Result<()> {
        let dev = Device::Cpu;
        let a = candle_core::Var::ones(3, DType::F32, &dev)?;
        let y = a.apply_op2(&a, Custom(Add))?;
        let e = y
            .sum_all()?
            .backward()
            .expect_err("no backward")
            .to_string();
        assert!(e.contains("test-add"), "{e}");
        Ok(())
    }
}
