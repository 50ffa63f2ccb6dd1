//! AdamW with savable state, and gradient accumulation with clipping.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chexvision_models::candle_core::{
    backprop::GradStore, CpuStorage, DType, Device, InplaceOp1, Layout, Result as CandleResult,
    Storage, StorageRef, Tensor, Var,
};

use rayon::prelude::*;

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
            if let Some((m, v)) = self.step_fused(var, g, name, lr, t)? {
                self.m.insert(name.clone(), m);
                self.v.insert(name.clone(), v);
                self.steps.insert(name.clone(), t);
                continue;
            }
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

    /// One parameter's update in a single pass over (p, g, m, v) with p
    /// updated in place, where all are contiguous f32 on the CPU (`None`
    /// otherwise; the caller then composes tensor ops). Composed, the
    /// update is fourteen tensor ops per parameter, each allocating a
    /// parameter-sized tensor. Returns the new moments.
    fn step_fused(
        &self,
        var: &Var,
        g: &Tensor,
        name: &str,
        lr: f64,
        t: u32,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let (m, v) = (self.m.get(name), self.v.get(name));
        let tensors = [Some(var.as_tensor()), Some(g), m, v];
        let fits = tensors
            .iter()
            .flatten()
            .all(|x| x.device().is_cpu() && x.dtype() == DType::F32 && x.dims() == var.dims());
        if !fits {
            return Ok(None);
        }
        let (g_storage, g_layout) = g.storage_and_layout();
        let m_guard = m.map(|m| m.storage_and_layout());
        let v_guard = v.map(|v| v.storage_and_layout());
        let (Some(g), Some(m), Some(v)) = (
            cpu_f32(&g_storage, g_layout),
            optional_cpu_f32(&m_guard),
            optional_cpu_f32(&v_guard),
        ) else {
            return Ok(None);
        };
        let update = AdamWUpdate {
            // 1 − β in f64 first: 1 − 0.9f32 is 0.100000024, not 0.1.
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            eps: self.eps as f32,
            decay: (1.0 - lr * self.weight_decay) as f32,
            step_size: (lr / (1.0 - self.beta1.powi(t as i32))) as f32,
            bias2_sqrt: (1.0 - self.beta2.powi(t as i32)).sqrt() as f32,
            g,
            m,
            v,
            moments: Mutex::new((Vec::new(), Vec::new())),
        };
        var.as_tensor().inplace_op1(&update)?;
        let (m, v) = update
            .moments
            .into_inner()
            .map_err(|_| TrainError::OptimiserState("adamw moments lock poisoned".into()))?;
        let device = var.device();
        Ok(Some((
            Tensor::from_vec(m, var.shape(), device)?,
            Tensor::from_vec(v, var.shape(), device)?,
        )))
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

/// A contiguous f32 CPU tensor's values.
fn cpu_f32<'a>(storage: &'a Storage, layout: &Layout) -> Option<&'a [f32]> {
    match storage {
        Storage::Cpu(CpuStorage::F32(data)) => {
            let (start, end) = layout.contiguous_offsets()?;
            data.get(start..end)
        }
        _ => None,
    }
}

/// `Some(None)` for a moment not yet kept (zero), `Some(Some(values))` for
/// a usable one, `None` for one the fused step cannot read.
fn optional_cpu_f32<'a>(guard: &'a Option<(StorageRef<'_>, &Layout)>) -> Option<Option<&'a [f32]>> {
    match guard {
        None => Some(None),
        Some((storage, layout)) => cpu_f32(storage, layout).map(Some),
    }
}

/// PyTorch's AdamW step for one parameter, applied in place; the new
/// moments are left in `moments`.
struct AdamWUpdate<'a> {
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    /// 1 − lr · weight decay.
    decay: f32,
    /// lr / (1 − β₁ᵗ) and √(1 − β₂ᵗ), computed in f64 as PyTorch does.
    step_size: f32,
    bias2_sqrt: f32,
    g: &'a [f32],
    m: Option<&'a [f32]>,
    v: Option<&'a [f32]>,
    moments: Mutex<(Vec<f32>, Vec<f32>)>,
}

impl InplaceOp1 for AdamWUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-step"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> CandleResult<()> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            chexvision_models::candle_core::bail!("adamw: the parameter must be contiguous f32");
        };
        let p = &mut data[start..end];
        if p.len() != self.g.len() {
            chexvision_models::candle_core::bail!(
                "adamw: {} parameter values, {} gradient values",
                p.len(),
                self.g.len()
            );
        }
        // Elementwise, so chunks may run on any thread in any order.
        const CHUNK: usize = 1 << 14;
        let mut m_new = vec![0f32; p.len()];
        let mut v_new = vec![0f32; p.len()];
        p.par_chunks_mut(CHUNK)
            .zip(m_new.par_chunks_mut(CHUNK))
            .zip(v_new.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(chunk, ((p, m_out), v_out))| {
                let offset = chunk * CHUNK;
                let g = &self.g[offset..offset + p.len()];
                let m_prev = self.m.map(|m| &m[offset..offset + p.len()]);
                let v_prev = self.v.map(|v| &v[offset..offset + p.len()]);
                for i in 0..p.len() {
                    let (g, m_prev) = (g[i], m_prev.map_or(0.0, |m| m[i]));
                    let v_prev = v_prev.map_or(0.0, |v| v[i]);
                    // The order of PyTorch's single-tensor AdamW: decay,
                    // lerp, addcmul, then addcdiv with √v / √(1 − β₂ᵗ) + ε.
                    let m = m_prev + (g - m_prev) * self.one_minus_beta1;
                    let v = v_prev * self.beta2 + g * g * self.one_minus_beta2;
                    let denom = v.sqrt() / self.bias2_sqrt + self.eps;
                    p[i] = p[i] * self.decay - self.step_size * (m / denom);
                    m_out[i] = m;
                    v_out[i] = v;
                }
            });
        *self.moments.lock().map_err(|_| {
            chexvision_models::candle_core::Error::Msg("adamw moments lock poisoned".into())
        })? = (m_new, v_new);
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
            // One micro-batch: the sum is the average (no copy).
            let average = if self.micro_batches > 1 {
                (sum / n)?
            } else {
                sum
            };
            grads.insert(name, average);
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
