//! Building blocks shared by the networks: BatchNorm with running
//! statistics that train, save and restore, and initialised conv/linear
//! constructors.

use std::cell::Cell;

use candle_core::{DType, Module, Tensor, Var, D};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Conv2d, Conv2dConfig, Init, VarBuilder};

use crate::Result;

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Runs `f` with convolutions and linear layers computed in `dtype`
/// (mixed precision, like `torch.autocast`): their inputs and weights are
/// cast to `dtype` and their outputs back to the input's type, so the
/// variables (master weights), BatchNorm, pooling and the loss stay f32,
/// and gradients reach the f32 variables through the casts. `None` or F32:
/// full precision. Per thread, restored when `f` returns.
pub fn autocast<T>(dtype: Option<DType>, f: impl FnOnce() -> T) -> T {
    let dtype = dtype.filter(|d| *d != DType::F32);
    let previous = AUTOCAST.with(|a| a.replace(dtype));
    let result = f();
    AUTOCAST.with(|a| a.set(previous));
    result
}

pub(crate) fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// A bias-free convolution that follows [`autocast`]. In f32 on the CPU
/// it runs as im2col + gemm with its own backward (`conv.rs`);
/// otherwise through candle's `conv2d`.
#[derive(Debug, Clone)]
pub struct Conv(Conv2d);

impl Conv {
    pub(crate) fn weight(&self) -> &Tensor {
        self.0.weight()
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match autocast_dtype() {
            Some(dtype) if dtype != x.dtype() => {
                let cfg = self.0.config();
                x.to_dtype(dtype)?
                    .conv2d(
                        &self.0.weight().to_dtype(dtype)?,
                        cfg.padding,
                        cfg.stride,
                        cfg.dilation,
                        cfg.groups,
                    )?
                    .to_dtype(x.dtype())
            }
            _ => {
                let cfg = self.0.config();
                let weight = self.0.weight();
                if crate::conv::fast_path_applies(x, weight, cfg.groups, cfg.dilation) {
                    crate::conv::conv2d(x, weight, cfg.stride, cfg.padding)
                } else {
                    self.0.forward(x)
                }
            }
        }
    }
}

/// A linear layer that follows [`autocast`].
#[derive(Debug, Clone)]
pub struct Linear(candle_nn::Linear);

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match autocast_dtype() {
            Some(dtype) if dtype != x.dtype() => {
                let y = x
                    .to_dtype(dtype)?
                    .broadcast_matmul(&self.0.weight().to_dtype(dtype)?.t()?)?;
                let y = match self.0.bias() {
                    Some(bias) => y.broadcast_add(&bias.to_dtype(dtype)?)?,
                    None => y,
                };
                y.to_dtype(x.dtype())
            }
            _ => self.0.forward(x),
        }
    }
}

/// PyTorch's BatchNorm2d defaults.
pub(crate) const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// Kaiming normal, fan-out, ReLU: torchvision's init for ResNet convs.
pub(crate) const KAIMING_FAN_OUT: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanOut,
    non_linearity: NonLinearity::ReLU,
};

/// Kaiming normal, fan-in, ReLU: torchvision's init for DenseNet convs.
pub(crate) const KAIMING_FAN_IN: Init = Init::Kaiming {
    dist: NormalOrUniform::Normal,
    fan: FanInOut::FanIn,
    non_linearity: NonLinearity::ReLU,
};

/// BatchNorm2d with torchvision's parameter names (`weight`, `bias`,
/// `running_mean`, `running_var`).
///
/// The running statistics are read through the same `VarBuilder` as the
/// weights. Built from a `VarMap` they are variables of that map, so a
/// train-mode forward updates them in place and `VarMap::save` (or a
/// checkpoint) carries them; they never get gradients, and the optimiser
/// must leave them out (see [`crate::is_buffer`]). Built from plain tensors
/// (inference), train mode is refused.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    running: Option<(Var, Var)>,
}

impl BatchNorm2d {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        let running_mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        let running_var = vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        // A variable shares its storage with the VarMap entry, so updating
        // it through `Var::set` is what the map saves.
        let running = if running_mean.is_variable() && running_var.is_variable() {
            Some((
                Var::from_tensor(&running_mean)?,
                Var::from_tensor(&running_var)?,
            ))
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            running,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_inner(x, train, false)
    }

    /// `relu(self.forward_t(x, train))`, in one pass where the fused CPU
    /// op applies (train mode, f32).
    pub fn forward_relu_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_inner(x, train, true)
    }

    fn forward_inner(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if train && crate::batch_norm::fast_path_applies(x) {
            self.running_vars()?; // refused before any work
            let count = values_per_channel(x)?;
            let (y, stats) =
                crate::batch_norm::batch_norm_train(x, &self.weight, &self.bias, BN_EPS, relu)?;
            self.record_batch_stats(&stats.mean, &stats.var, count)?;
            return Ok(y);
        }
        let y = self.forward_composed(x, train)?;
        Ok(if relu { y.relu()? } else { y })
    }

    /// γ and β.
    pub(crate) fn affine_params(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }

    /// Folds a train-mode batch's mean and biased variance (over `count`
    /// values per channel) into the running statistics.
    pub(crate) fn record_batch_stats(&self, mean: &[f32], var: &[f32], count: usize) -> Result<()> {
        let (running_mean, running_var) = self.running_vars()?;
        let device = self.weight.device();
        let mean = Tensor::from_slice(mean, mean.len(), device)?;
        let var = Tensor::from_slice(var, var.len(), device)?;
        self.update_running(running_mean, running_var, &mean, &var, count)
    }

    fn running_vars(&self) -> Result<(&Var, &Var)> {
        match &self.running {
            Some((mean, var)) => Ok((mean, var)),
            None => Err(crate::ModelError::Mode(
                "train mode needs running statistics held as variables (build the model from a VarMap)".into(),
            )),
        }
    }

    /// Running statistics, outside the graph; the variance is unbiased.
    fn update_running(
        &self,
        running_mean: &Var,
        running_var: &Var,
        mean: &Tensor,
        var: &Tensor,
        count: usize,
    ) -> Result<()> {
        let mean = mean
            .detach()
            .flatten_all()?
            .to_dtype(running_mean.dtype())?;
        let unbiased = (var.detach().flatten_all()? * (count as f64 / (count - 1) as f64))?
            .to_dtype(running_var.dtype())?;
        let new_mean = ((running_mean.as_tensor() * (1.0 - BN_MOMENTUM))? + (mean * BN_MOMENTUM)?)?;
        let new_var =
            ((running_var.as_tensor() * (1.0 - BN_MOMENTUM))? + (unbiased * BN_MOMENTUM)?)?;
        running_mean.set(&new_mean)?;
        running_var.set(&new_var)?;
        Ok(())
    }

    /// BatchNorm from candle's tensor ops, for every device and dtype (and
    /// the reference the fused op is tested against).
    pub(crate) fn forward_composed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        if !train {
            // y = x * scale + shift with scale = w / sqrt(var + eps).
            let scale = (&self.weight / (self.running_var.detach() + BN_EPS)?.sqrt()?)?;
            let shift = (&self.bias - (self.running_mean.detach() * &scale)?)?;
            let y = x
                .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
                .broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
            return Ok(y);
        }
        let (running_mean, running_var) = self.running_vars()?;
        let (n, _, h, w) = x.dims4()?;
        let count = values_per_channel(x)?;
        // Per-channel statistics over (N, H, W).
        let xt = x.transpose(0, 1)?.reshape((c, count))?;
        let mean = xt.mean_keepdim(D::Minus1)?;
        let centered = xt.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_std = (var.clone() + BN_EPS)?.sqrt()?.recip()?;
        let scale = inv_std.broadcast_mul(&self.weight.reshape((c, 1))?)?;
        let y = centered
            .broadcast_mul(&scale)?
            .broadcast_add(&self.bias.reshape((c, 1))?)?
            .reshape((c, n, h, w))?
            .transpose(0, 1)?
            .contiguous()?;

        self.update_running(running_mean, running_var, &mean, &var, count)?;
        Ok(y)
    }

    /// The running statistics as plain tensors (mean, var).
    pub fn running_stats(&self) -> (Tensor, Tensor) {
        (self.running_mean.detach(), self.running_var.detach())
    }
}

/// N·H·W, which train mode needs to be at least 2.
pub(crate) fn values_per_channel(x: &Tensor) -> Result<usize> {
    let (n, _, h, w) = x.dims4()?;
    let count = n * h * w;
    if count < 2 {
        return Err(crate::ModelError::Mode(format!(
            "train-mode BatchNorm needs more than one value per channel, got input {:?}",
            x.dims()
        )));
    }
    Ok(count)
}

/// Bias-free convolution, square kernel.
pub(crate) fn conv2d(
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    init: Init,
    vb: VarBuilder,
) -> Result<Conv> {
    let weight = vb.get_with_hints((cout, cin, kernel, kernel), "weight", init)?;
    let cfg = Conv2dConfig {
        padding,
        stride,
        dilation: 1,
        groups: 1,
        cudnn_fwd_algo: None,
    };
    Ok(Conv(Conv2d::new(weight, None, cfg)))
}

/// Linear layer with PyTorch's default init (uniform ±1/√fan_in for the
/// weight) and a zero bias, as torchvision initialises classifiers.
pub(crate) fn linear(cin: usize, cout: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (cin as f64).sqrt();
    let weight = vb.get_with_hints(
        (cout, cin),
        "weight",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    let bias = vb.get_with_hints(cout, "bias", Init::Const(0.0))?;
    Ok(Linear(candle_nn::Linear::new(weight, Some(bias))))
}

/// Linear layer with PyTorch's default init for both weight and bias.
pub(crate) fn linear_default(cin: usize, cout: usize, vb: VarBuilder) -> Result<Linear> {
    let bound = 1.0 / (cin as f64).sqrt();
    let weight = vb.get_with_hints(
        (cout, cin),
        "weight",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    let bias = vb.get_with_hints(
        cout,
        "bias",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok(Linear(candle_nn::Linear::new(weight, Some(bias))))
}

/// 2×2 average pooling with stride 2, PyTorch's `avg_pool2d(x, 2)`: an odd
/// last row or column is left out. candle's backward spreads the gradient
/// by a nearest upsampling to the input's size, which for an odd side puts
/// rows in the wrong windows (and gives the left-out one a share), so only
/// the even part is pooled: its backward is exact, and `narrow` gives the
/// left-out row and column zero gradient. (A DenseNet transition sees an odd
/// side when the image size is not a multiple of 32, e.g. 75 at 300 px.)
pub(crate) fn avg_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (even_h, even_w) = (h / 2 * 2, w / 2 * 2);
    if (even_h, even_w) == (h, w) {
        return Ok(x.avg_pool2d(2)?);
    }
    Ok(x.narrow(2, 0, even_h)?
        .narrow(3, 0, even_w)?
        .contiguous()?
        .avg_pool2d(2)?)
}

/// Global average pool (N, C, H, W) → (N, C).
pub(crate) fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    Ok(x.reshape((n, c, h * w))?.mean(D::Minus1)?)
}

pub(crate) fn check_input(x: &Tensor) -> Result<()> {
    let dims = x.dims();
    if dims.len() != 4 || dims[1] != 3 || dims[2] < 32 || dims[3] < 32 {
        return Err(crate::ModelError::InputShape {
            got: dims.to_vec(),
            expected: "(batch, 3, height ≥ 32, width ≥ 32)".into(),
        });
    }
    if x.dtype() != DType::F32 && x.dtype() != DType::BF16 && x.dtype() != DType::F16 {
        return Err(crate::ModelError::InputShape {
            got: dims.to_vec(),
            expected: format!("a float tensor, got {:?}", x.dtype()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::test_util::{flat, grads_of, random};

    /// On odd sides the pool drops the last row and column, and the
    /// gradient reaches exactly the pooled pixels, a quarter each.
    #[test]
    fn avg_pool_2x2_is_exact_on_odd_sides() {
        for (h, w) in [(5, 3), (4, 4), (7, 6)] {
            let x = Var::from_tensor(&random(&[2, 3, h, w], 1, -1.0, 1.0)).unwrap();
            let y = avg_pool_2x2(&x).unwrap();
            assert_eq!(y.dims(), [2, 3, h / 2, w / 2]);
            let u = random(y.dims(), 2, -1.0, 1.0);
            let grads = grads_of(&y, &u);
            let (xv, yv, uv) = (flat(&x), flat(&y), flat(&u));
            let dx = flat(grads.get(&x).unwrap());
            let (ho, wo) = (h / 2, w / 2);
            for plane in 0..6 {
                for i in 0..h {
                    for j in 0..w {
                        let at = (plane * h + i) * w + j;
                        let expected = if i < 2 * ho && j < 2 * wo {
                            uv[(plane * ho + i / 2) * wo + j / 2] / 4.0
                        } else {
                            0.0
                        };
                        assert!((dx[at] - expected).abs() < 1e-6, "{h}×{w} ({i}, {j})");
                    }
                }
                for i in 0..ho {
                    for j in 0..wo {
                        let p =
                            |di: usize, dj: usize| xv[(plane * h + 2 * i + di) * w + 2 * j + dj];
                        let mean = (p(0, 0) + p(0, 1) + p(1, 0) + p(1, 1)) / 4.0;
                        assert!((yv[(plane * ho + i) * wo + j] - mean).abs() < 1e-6);
                    }
                }
            }
        }
    }
}
