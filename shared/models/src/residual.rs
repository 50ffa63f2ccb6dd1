//! The end of an SE-ResNet block, `relu(y · gate + shortcut)` with the
//! squeeze-excitation gate per (image, channel), as one CPU op forward and
//! one backward. Composed, it is three elementwise kernels that each
//! allocate an activation-sized tensor the graph keeps, and as many again
//! backward:
//!
//! ```text
//! g' = ∂L/∂out · [out > 0]
//! ∂L/∂y = g'·gate,   ∂L/∂gate[n, c] = Σ_hw g'·y,   ∂L/∂shortcut = g'
//! ```

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::pool::{contiguous_f32, lock_state};
use crate::vector::simd;

/// Whether [`gated_residual_relu`] applies to these operands.
pub(crate) fn fast_path_applies(y: &Tensor) -> bool {
    y.device().is_cpu() && y.dtype() == candle_core::DType::F32 && y.rank() == 4
}

/// `relu(y · gate + shortcut)` for `y` and `shortcut` (N, C, H, W) and
/// `gate` (N, C), differentiable in all three.
pub(crate) fn gated_residual_relu(
    y: &Tensor,
    gate: &Tensor,
    shortcut: &Tensor,
) -> candle_core::Result<Tensor> {
    y.contiguous()?.apply_op3(
        &gate.contiguous()?,
        &shortcut.contiguous()?,
        GatedResidualRelu,
    )
}

struct GatedResidualRelu;

/// (N·C, H·W), checking that the three operands fit.
fn dims(y: &Layout, gate: &Layout, other: &Layout) -> candle_core::Result<(usize, usize)> {
    let (n, c, h, w) = y.shape().dims4()?;
    if gate.shape().dims() != [n, c] || other.shape() != y.shape() {
        candle_core::bail!(
            "gated residual: input {:?}, gate {:?} and {:?} do not fit",
            y.shape(),
            gate.shape(),
            other.shape()
        );
    }
    Ok((n * c, h * w))
}

impl CustomOp3 for GatedResidualRelu {
    fn name(&self) -> &'static str {
        "gated-residual-relu"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, hw) = dims(yl, gl, sl)?;
        let y = contiguous_f32(ys, yl, "gated residual forward")?;
        let gate = contiguous_f32(gs, gl, "gated residual forward")?;
        let shortcut = contiguous_f32(ss, sl, "gated residual forward")?;
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(hw)
            .zip(y.par_chunks(hw).zip(shortcut.par_chunks(hw)))
            .zip(gate.par_iter())
            .for_each(|((out, (y, s)), &k)| {
                simd(
                    #[inline(always)]
                    move || {
                        for ((o, &y), &s) in out.iter_mut().zip(y).zip(s) {
                            *o = (y * k + s).max(0.0);
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), yl.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        gate: &Tensor,
        shortcut: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let rest = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let grad = GatedResidualReluGrad {
            gate: gate.flatten_all()?.to_vec1::<f32>()?,
            rest: rest.clone(),
        };
        let dy = out.apply_op3_no_bwd(y, &grad_out.contiguous()?, &grad)?;
        let (dgate, dshortcut) = std::mem::take(&mut *lock_state(&rest, "gated residual")?);
        let dgate = Tensor::from_vec(dgate, gate.shape(), gate.device())?;
        let dshortcut = Tensor::from_vec(dshortcut, shortcut.shape(), shortcut.device())?;
        Ok((
            y.track_op().then_some(dy),
            gate.track_op().then_some(dgate),
            shortcut.track_op().then_some(dshortcut),
        ))
    }
}

/// Arguments (output, y, upstream gradient); returns ∂L/∂y and leaves
/// (∂L/∂gate, ∂L/∂shortcut) in `rest`.
struct GatedResidualReluGrad {
    gate: Vec<f32>,
    rest: Arc<Mutex<(Vec<f32>, Vec<f32>)>>,
}

impl CustomOp3 for GatedResidualReluGrad {
    fn name(&self) -> &'static str {
        "gated-residual-relu-grad"
    }

    fn cpu_fwd(
        &self,
        os: &CpuStorage,
        ol: &Layout,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = ol.shape().dims4()?;
        let (planes, hw) = (n * c, h * w);
        if yl.shape() != ol.shape() || gl.shape() != ol.shape() {
            candle_core::bail!(
                "gated residual backward: output {:?}, input {:?}, gradient {:?}",
                ol.shape(),
                yl.shape(),
                gl.shape()
            );
        }
        if self.gate.len() != planes {
            candle_core::bail!(
                "gated residual backward: {} gates for {planes} planes",
                self.gate.len()
            );
        }
        let out = contiguous_f32(os, ol, "gated residual backward")?;
        let y = contiguous_f32(ys, yl, "gated residual backward")?;
        let g = contiguous_f32(gs, gl, "gated residual backward")?;
        let mut dy = vec![0f32; y.len()];
        let mut dshortcut = vec![0f32; y.len()];
        let dgate: Vec<f32> = dy
            .par_chunks_mut(hw)
            .zip(dshortcut.par_chunks_mut(hw))
            .zip(
                out.par_chunks(hw)
                    .zip(y.par_chunks(hw))
                    .zip(g.par_chunks(hw)),
            )
            .zip(self.gate.par_iter())
            .map(|(((dy, ds), ((out, y), g)), &k)| {
                simd(
                    #[inline(always)]
                    move || {
                        let mut acc = [0f32; 8];
                        for (i, ((((dy, ds), &o), &y), &g)) in
                            dy.iter_mut().zip(ds).zip(out).zip(y).zip(g).enumerate()
                        {
                            let g = if o > 0.0 { g } else { 0.0 };
                            *ds = g;
                            *dy = g * k;
                            acc[i % 8] += g * y;
                        }
                        acc.iter().map(|&v| v as f64).sum::<f64>() as f32
                    },
                )
            })
            .collect();
        *lock_state(&self.rest, "gated residual")? = (dgate, dshortcut);
        Ok((CpuStorage::F32(dy), ol.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::test_util::max_rel_diff;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        crate::test_util::random(shape, seed, -1.0, 1.0)
    }

    /// Output and all three gradients equal candle's composed
    /// `relu(y · gate + shortcut)`.
    #[test]
    fn matches_the_composed_ops_forward_and_backward() {
        let (n, c, h, w) = (3, 5, 7, 6);
        let y = Var::from_tensor(&random(&[n, c, h, w], 1)).unwrap();
        let gate = Var::from_tensor(&random(&[n, c], 2)).unwrap();
        let shortcut = Var::from_tensor(&random(&[n, c, h, w], 3)).unwrap();
        let upstream = random(&[n, c, h, w], 4);

        let ours = gated_residual_relu(&y, &gate, &shortcut).unwrap();
        let theirs = (y
            .broadcast_mul(&gate.reshape((n, c, 1, 1)).unwrap())
            .unwrap()
            + shortcut.as_tensor())
        .unwrap()
        .relu()
        .unwrap();
        assert!(max_rel_diff(&ours, &theirs) < 1e-6);
        let g_ours = crate::test_util::grads_of(&ours, &upstream);
        let g_theirs = crate::test_util::grads_of(&theirs, &upstream);
        for (name, var) in [("y", &y), ("gate", &gate), ("shortcut", &shortcut)] {
            let d = max_rel_diff(g_ours.get(var).unwrap(), g_theirs.get(var).unwrap());
            assert!(d < 1e-5, "{name} gradient differs by {d}");
        }
    }

    #[test]
    fn refuses_a_gate_of_the_wrong_shape() {
        let err = gated_residual_relu(
            &random(&[2, 3, 4, 4], 1),
            &random(&[2, 4], 2),
            &random(&[2, 3, 4, 4], 3),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("do not fit"), "{err}");
    }
}
