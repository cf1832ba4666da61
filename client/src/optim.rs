//! Optimisers candle-nn lacks: SGD with momentum and weight decay, LARS, and a linear warm-up +
//! cosine learning-rate schedule.
//!
//! SGD (PyTorch semantics): `g = ∇ + wd·w; v = μ·v + g; w -= lr·v`.
//! LARS (SimCLR's): for weights with decay, `g = ∇ + wd·w`, trust ratio
//! `r = η·‖w‖ / ‖g‖` (1 when either norm is 0), `v = μ·v + r·g`, `w -= lr·v`; biases and BN
//! parameters (excluded from decay) are neither decayed nor adapted.

use candle_core::{Result, Tensor, Var};

/// One trainable tensor and whether it is decayed/adapted (weights) or not (biases, BN).
pub struct Param {
    pub var: Var,
    pub decay: bool,
    velocity: Option<Tensor>,
}

impl Param {
    pub fn new(var: Var, decay: bool) -> Self {
        Self {
            var,
            decay,
            velocity: None,
        }
    }
}

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    Sgd,
    Lars { eta: f64 },
}

/// SGD/LARS with momentum and decoupled-from-schedule weight decay.
pub struct Optimizer {
    pub params: Vec<Param>,
    pub rule: Rule,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Optimizer {
    pub fn new(params: Vec<Param>, rule: Rule, momentum: f64, weight_decay: f64) -> Self {
        Self {
            params,
            rule,
            momentum,
            weight_decay,
        }
    }

    /// Applies one update with learning rate `lr` from the gradients in `grads`.
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore, lr: f64) -> Result<()> {
        for p in &mut self.params {
            let Some(grad) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            // Detached: the update must not record autograd history, or every step's momentum
            // buffer would keep the previous ones (and their graphs) alive.
            let w = p.var.as_tensor().detach();
            let w = &w;
            let mut g = grad.detach();
            if p.decay && self.weight_decay != 0.0 {
                g = (g + (w * self.weight_decay)?)?;
            }
            if let (Rule::Lars { eta }, true) = (self.rule, p.decay) {
                let wn = w.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
                let gn = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
                let trust = if wn > 0.0 && gn > 0.0 {
                    eta * wn / gn
                } else {
                    1.0
                };
                g = (g * trust)?;
            }
            let v = match &p.velocity {
                Some(v) if self.momentum != 0.0 => ((v * self.momentum)? + g)?,
                _ => g,
            };
            p.var.set(&(w - (&v * lr)?)?)?;
            p.velocity = Some(v.detach());
        }
        Ok(())
    }

    /// Momentum buffers by parameter position (for checkpoints).
    pub fn velocities(&self) -> Vec<Option<Tensor>> {
        self.params.iter().map(|p| p.velocity.clone()).collect()
    }

    pub fn set_velocities(&mut self, v: Vec<Option<Tensor>>) {
        for (p, v) in self.params.iter_mut().zip(v) {
            p.velocity = v;
        }
    }
}

/// Linear warm-up from 0 over `warmup` steps, then cosine decay to 0 at `total`.
pub fn warmup_cosine(step: usize, total: usize, warmup: usize, base_lr: f64) -> f64 {
    if step < warmup {
        return base_lr * (step + 1) as f64 / warmup as f64;
    }
    let span = (total.saturating_sub(warmup)).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    base_lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn setup(rule: Rule) -> (Optimizer, Var) {
        let w = Var::new(&[3.0f32, -4.0], &Device::Cpu).unwrap();
        let opt = Optimizer::new(vec![Param::new(w.clone(), true)], rule, 0.9, 0.1);
        (opt, w)
    }

    #[test]
    fn sgd_momentum_matches_hand_computation() {
        let (mut opt, w) = setup(Rule::Sgd);
        // loss = sum(w * c)  →  ∇ = c
        let c = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        for _ in 0..2 {
            let loss = (w.as_tensor() * &c).unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap(), 0.5).unwrap();
        }
        // step 1: g = c + 0.1 w = [1.3, 1.6]; v = g; w = [3 - .65, -4 - .8] = [2.35, -4.8]
        // step 2: g = [1.235, 1.52]; v = 0.9 [1.3, 1.6] + g = [2.405, 2.96]; w -= 0.5 v
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        let want = [2.35 - 0.5 * 2.405, -4.8 - 0.5 * 2.96];
        assert!(
            (got[0] - want[0]).abs() < 1e-5 && (got[1] - want[1]).abs() < 1e-5,
            "{got:?}"
        );
    }

    #[test]
    fn lars_scales_by_trust_ratio() {
        let (mut opt, w) = setup(Rule::Lars { eta: 0.001 });
        let c = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let loss = (w.as_tensor() * &c).unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap(), 1.0).unwrap();
        // g = c + 0.1 w = [1.3, 1.6]; ‖w‖ = 5, ‖g‖ = sqrt(1.69 + 2.56); r = 0.001·5/‖g‖
        let gn = (1.69f64 + 2.56).sqrt();
        let r = 0.001 * 5.0 / gn;
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        assert!((got[0] as f64 - (3.0 - r * 1.3)).abs() < 1e-6);
        assert!((got[1] as f64 - (-4.0 - r * 1.6)).abs() < 1e-6);
    }

    #[test]
    fn schedule_shape() {
        assert!((warmup_cosine(0, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((warmup_cosine(9, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((warmup_cosine(10, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((warmup_cosine(55, 100, 10, 1.0) - 0.5).abs() < 1e-12);
        assert!(warmup_cosine(100, 100, 10, 1.0).abs() < 1e-12);
    }
}
