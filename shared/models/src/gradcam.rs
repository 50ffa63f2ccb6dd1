//! Grad-CAM (Selvaraju et al., 2017) from the last feature map.
//!
//! For output k: α_c = mean over (h, w) of ∂y_k/∂A_c, map = ReLU(Σ_c α_c·A_c),
//! upsampled bilinearly to the input size and scaled to [0, 1] by its
//! maximum. The gradient is taken with the feature map as the only
//! variable, so the backbone's weights (plain tensors) record no graph.

use candle_core::{Tensor, Var};

use crate::{ChestModel, ModelError, Result};

/// A heatmap at input resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCam {
    pub width: usize,
    pub height: usize,
    /// Row-major, in [0, 1]; all zero when nothing supports the output.
    pub heatmap: Vec<f32>,
    /// Which output: 0..findings for a finding, `findings` for abnormal.
    pub output: usize,
    /// The model's probability for that output.
    pub probability: f32,
}

/// Grad-CAM for output `output` of a single image `x` of shape
/// (1, 3, H, W), already normalised as the model expects.
pub fn grad_cam(model: &ChestModel, x: &Tensor, output: usize) -> Result<GradCam> {
    if output >= model.num_outputs() {
        return Err(ModelError::OutputIndex {
            index: output,
            outputs: model.num_outputs(),
        });
    }
    let (n, _, height, width) = x.dims4()?;
    if n != 1 {
        return Err(ModelError::InputShape {
            got: x.dims().to_vec(),
            expected: "a single image (1, 3, H, W)".into(),
        });
    }
    let fmap = Var::from_tensor(&model.feature_map(x, false)?.detach())?;
    let logits = model.heads_from_feature_map(fmap.as_tensor(), false)?;
    let all = Tensor::cat(&[&logits.findings, &logits.abnormal], 1)?;
    let target = all.narrow(1, output, 1)?;
    let probability = candle_nn::ops::sigmoid(&target)?
        .flatten_all()?
        .to_vec1::<f32>()?[0];
    let grads = target.sum_all()?.backward()?;
    let grad = grads
        .get(fmap.as_tensor())
        .ok_or_else(|| ModelError::Mode("no gradient reached the feature map".into()))?;
    let (_, c, _, _) = grad.dims4()?;
    let weights = grad.mean_keepdim(3)?.mean_keepdim(2)?; // (1, C, 1, 1)
    let cam = fmap
        .as_tensor()
        .broadcast_mul(&weights)?
        .sum_keepdim(1)?
        .relu()?
        .upsample_bilinear2d(height, width, false)?;
    debug_assert_eq!(c, fmap.dims()[1]);
    let mut heatmap = cam.flatten_all()?.to_vec1::<f32>()?;
    let max = heatmap.iter().copied().fold(0f32, f32::max);
    if max > 0.0 && max.is_finite() {
        heatmap
            .iter_mut()
            .for_each(|v| *v = (*v / max).clamp(0.0, 1.0));
    } else {
        heatmap.iter_mut().for_each(|v| *v = 0.0);
    }
    Ok(GradCam {
        width,
        height,
        heatmap,
        output,
        probability,
    })
}

/// The "jet" colour map: blue (0) → cyan → yellow → red (1).
fn jet(v: f32) -> [f32; 3] {
    let v = v.clamp(0.0, 1.0);
    let channel = |offset: f32| (1.5 - (4.0 * v - offset).abs()).clamp(0.0, 1.0);
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// Blends the heatmap in jet colours over a grayscale image of the same
/// size (`gray`, row-major) and encodes an RGB PNG. `alpha` is the
/// heatmap's weight at full activation; weak activations show more of the
/// image.
pub fn overlay_png(gray: &[u8], cam: &GradCam, alpha: f32) -> Result<Vec<u8>> {
    if gray.len() != cam.width * cam.height {
        return Err(ModelError::InputShape {
            got: vec![gray.len()],
            expected: format!(
                "{}×{} = {} gray pixels",
                cam.width,
                cam.height,
                cam.width * cam.height
            ),
        });
    }
    let alpha = alpha.clamp(0.0, 1.0);
    let mut rgb = Vec::with_capacity(gray.len() * 3);
    for (&g, &h) in gray.iter().zip(&cam.heatmap) {
        let a = alpha * h.sqrt(); // weak activations fade out smoothly
        let colour = jet(h);
        for ch in colour {
            let v = (1.0 - a) * f32::from(g) + a * 255.0 * ch;
            rgb.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, cam.width as u32, cam.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .map_err(|e| ModelError::Io(std::io::Error::other(e)))?;
        writer
            .write_image_data(&rgb)
            .map_err(|e| ModelError::Io(std::io::Error::other(e)))?;
    }
    Ok(out)
}
