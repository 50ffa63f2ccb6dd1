//! AdamW with savable state, and gradient accumulation with clipping.

use std::collections::BTreeMap;

use chexvision_models::candle_core::{backprop::GradStore, DType, Device, Tensor, Var};

use crate::{Result, TrainError};

/// PyTorch's `torch.optim.AdamW` (β = (0.9, 0.999), ε = 1e-8): decoupled
/// weight decay, bias correction with a step count per parameter (a
/// parameter that had no gradient, such as a frozen backbone, is not
/// touched and its count does not advance, as in PyTorch). The moments and
/// counts are plain tensors, so a run can save and restore them.
pub struct AdamW {
    vars: Vec<(String, Var)>,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    steps: BTreeMap<String, u32>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, weight_decay: f64) -> Self {
        Self {
            vars,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
            steps: BTreeMap::new(),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// One update from averaged gradients by name; `lr(name)` gives each
    /// parameter's learning rate (parameter groups).
    pub fn step(
        &mut self,
        grads: &BTreeMap<String, Tensor>,
        lr: &dyn Fn(&str) -> f64,
    ) -> Result<()> {
        for (name, var) in &self.vars {
            let Some(g) = grads.get(name) else { continue };
            let lr = lr(name);
            let t = self.steps.get(name).copied().unwrap_or(0) + 1;
            let m_prev = match self.m.get(name) {
                Some(m) => m.clone(),
                None => g.zeros_like()?,
            };
            let v_prev = match self.v.get(name) {
                Some(v) => v.clone(),
                None => g.zeros_like()?,
            };
            let m = ((m_prev * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((v_prev * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let m_hat = (&m / (1.0 - self.beta1.powi(t as i32)))?;
            let v_hat = (&v / (1.0 - self.beta2.powi(t as i32)))?;
            let p = var.as_tensor().detach();
            let decayed = (&p * (1.0 - lr * self.weight_decay))?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
            self.steps.insert(name.clone(), t);
        }
        Ok(())
    }

    /// The optimiser state as tensors: `m.{name}`, `v.{name}`, `step.{name}`.
    pub fn state_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (name, m) in &self.m {
            out.insert(format!("m.{name}"), m.clone());
        }
        for (name, v) in &self.v {
            out.insert(format!("v.{name}"), v.clone());
        }
        for (name, &t) in &self.steps {
            out.insert(format!("step.{name}"), Tensor::new(&[t], &Device::Cpu)?);
        }
        Ok(out)
    }

    /// Restores [`Self::state_tensors`]; every entry must name a parameter
    /// of this optimiser with its shape.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let shapes: BTreeMap<&str, (&[usize], &Device)> = self
            .vars
            .iter()
            .map(|(n, v)| (n.as_str(), (v.dims(), v.device())))
            .collect();
        let (mut m, mut v, mut steps) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (key, tensor) in state {
            let (kind, name) = key
                .split_once('.')
                .ok_or_else(|| TrainError::OptimiserState(format!("unexpected entry `{key}`")))?;
            let (shape, device) = shapes.get(name).ok_or_else(|| {
                TrainError::OptimiserState(format!("`{key}` names no parameter of this model"))
            })?;
            match kind {
                "m" | "v" => {
                    if tensor.dims() != *shape {
                        return Err(TrainError::OptimiserState(format!(
                            "`{key}` has shape {:?}, the parameter {:?}",
                            tensor.dims(),
                            shape
                        )));
                    }
                    let t = tensor.to_device(device)?.to_dtype(DType::F32)?;
                    if kind == "m" {
                        m.insert(name.to_string(), t);
                    } else {
                        v.insert(name.to_string(), t);
                    }
                }
                "step" => {
                    let t = tensor.flatten_all()?.to_vec1::<u32>()?;
                    steps.insert(name.to_string(), t.first().copied().unwrap_or(0));
                }
                _ => {
                    return Err(TrainError::OptimiserState(format!(
                        "unexpected entry `{key}`"
                    )))
                }
            }
        }
        (self.m, self.v, self.steps) = (m, v, steps);
        Ok(())
    }
}

/// Sums the gradients of several micro-batches, then averages them and
/// clips their global L2 norm (PyTorch's `clip_grad_norm_`).
#[derive(Default)]
pub struct GradAccumulator {
    sums: BTreeMap<String, Tensor>,
    micro_batches: usize,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// Adds one backward pass's gradients of `vars`.
    pub fn add(&mut self, grads: &GradStore, vars: &[(String, Var)]) -> Result<()> {
        for (name, var) in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.detach();
                let sum = match self.sums.remove(name) {
                    Some(s) => (s + g)?,
                    None => g,
                };
                self.sums.insert(name.clone(), sum);
            }
        }
        self.micro_batches += 1;
        Ok(())
    }

    /// The averaged gradients, clipped to `max_norm` (0: no clipping), and
    /// their norm before clipping. Resets the accumulator.
    pub fn finish(&mut self, max_norm: f64) -> Result<(BTreeMap<String, Tensor>, f64)> {
        let n = self.micro_batches.max(1) as f64;
        let mut grads = BTreeMap::new();
        for (name, sum) in std::mem::take(&mut self.sums) {
            grads.insert(name, (sum / n)?);
        }
        self.micro_batches = 0;
        let mut total = 0f64;
        for g in grads.values() {
            total += f64::from(
                g.sqr()?
                    .sum_all()?
                    .to_dtype(DType::F32)?
                    .to_scalar::<f32>()?,
            );
        }
        let norm = total.sqrt();
        if max_norm > 0.0 && norm > max_norm {
            let scale = max_norm / (norm + 1e-6);
            for g in grads.values_mut() {
                *g = (&*g * scale)?;
            }
        }
        Ok((grads, norm))
    }
}
