//! Optimizers with explicit state. `tch`'s optimizers keep their state inside libtorch where it
//! cannot be saved; a checkpoint must hold it, or a replay from `W_i` would not reproduce
//! `W_{i+1}`. These follow PyTorch's `SGD` (no dampening) and `AdamW` update rules.

use std::collections::BTreeMap;

use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// SGD with momentum and L2 weight decay.
    Sgd { momentum: f64 },
    /// AdamW with decoupled weight decay.
    AdamW { beta1: f64, beta2: f64, eps: f64 },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
}

/// An optimizer's per-parameter state, named so it can be checkpointed beside the parameters.
#[derive(Debug)]
pub struct Optimizer {
    pub config: OptimizerConfig,
    /// `momentum.<param>` for SGD; `exp_avg.<param>` and `exp_avg_sq.<param>` for AdamW.
    pub state: BTreeMap<String, Tensor>,
}

impl Optimizer {
    /// Fresh state (zeros) for `params`.
    pub fn new(config: OptimizerConfig, params: &BTreeMap<String, Tensor>) -> Optimizer {
        let mut state = BTreeMap::new();
        for (name, p) in params {
            for slot in Self::slots(&config) {
                state.insert(format!("{slot}.{name}"), p.zeros_like());
            }
        }
        Optimizer { config, state }
    }

    /// The state tensors this configuration keeps per parameter.
    pub fn slots(config: &OptimizerConfig) -> &'static [&'static str] {
        match config.kind {
            OptimizerKind::Sgd { .. } => &["momentum"],
            OptimizerKind::AdamW { .. } => &["exp_avg", "exp_avg_sq"],
        }
    }

    /// One update of `params` from their gradients; `step` counts from 1.
    pub fn step(&mut self, params: &BTreeMap<String, Tensor>, step: u64) {
        let OptimizerConfig {
            kind,
            lr,
            weight_decay,
        } = self.config;
        tch::no_grad(|| {
            for (name, p) in params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                match kind {
                    OptimizerKind::Sgd { momentum } => {
                        let g = if weight_decay != 0.0 {
                            &g + &p * weight_decay
                        } else {
                            g
                        };
                        let buf = self
                            .state
                            .get_mut(&format!("momentum.{name}"))
                            .expect("state per param");
                        // First step: buf = 0 * momentum + g = g, as PyTorch initialises it.
                        let _ = buf.g_mul_scalar_(momentum).g_add_(&g);
                        let _ = p.g_sub_(&(&*buf * lr));
                    }
                    OptimizerKind::AdamW { beta1, beta2, eps } => {
                        if weight_decay != 0.0 {
                            let _ = p.g_mul_scalar_(1.0 - lr * weight_decay);
                        }
                        let m = self
                            .state
                            .get_mut(&format!("exp_avg.{name}"))
                            .expect("state per param");
                        let _ = m.g_mul_scalar_(beta1).g_add_(&(&g * (1.0 - beta1)));
                        let m = m.shallow_clone();
                        let v = self
                            .state
                            .get_mut(&format!("exp_avg_sq.{name}"))
                            .expect("state per param");
                        let _ = v.g_mul_scalar_(beta2).g_add_(&(&g * &g * (1.0 - beta2)));
                        let t = step as i32;
                        let bc1 = 1.0 - beta1.powi(t);
                        let bc2 = 1.0 - beta2.powi(t);
                        let denom = (v.sqrt() / bc2.sqrt()) + eps;
                        let _ = p.g_sub_(&(m / denom * (lr / bc1)));
                    }
                }
            }
        });
    }
}
