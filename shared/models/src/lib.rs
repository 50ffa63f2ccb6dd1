//! CheXVision networks on candle.
//!
//! * [`DenseNet`]: torchvision's DenseNet (any growth, blocks, initial
//!   features) with torchvision's state-dict names, so converted ImageNet
//!   `densenet121` weights load unchanged ([`load_torchvision_backbone`]).
//! * [`SeResNet`]: residual network with squeeze-excitation, for training
//!   from scratch.
//! * [`ChestModel`]: either backbone + global average pooling + two heads
//!   (14 finding logits, one abnormal logit) in one forward pass, in train
//!   or eval mode.
//! * [`Checkpoint`]: safetensors with metadata (architecture, config, label
//!   order, input size, normalisation, parameter count, tensor digest);
//!   BatchNorm running statistics included.
//! * [`grad_cam`]: class activation heatmaps for any of the outputs, and a
//!   colour overlay PNG.
//! * [`CpuInference`]: the eval-mode forward pass fused for CPU (BatchNorm
//!   folded, no concatenation, direct `gemm`), for serving.
//! * [`bce_with_logits`]: the numerically stable loss with `pos_weight`.
//!
//! Training on the CPU (f32) runs through fused ops with their own
//! backward passes: the im2col + gemm convolution (`conv.rs`) and its
//! Winograd F(2×2, 3×3) form for 3×3 stride-1 kernels (`winograd.rs`), BatchNorm
//! with its ReLU (`batch_norm.rs`), a whole DenseNet dense block in one
//! preallocated buffer (`dense_block.rs`), and the end of an SE-ResNet
//! block (`residual.rs`); other devices and dtypes compose candle's ops.
//!
//! Parity with PyTorch is tested against fixtures made by
//! `scripts/make_model_fixtures.py` (tests/parity.rs).

mod batch_norm;
mod checkpoint;
mod conv;
mod cpu;
mod dense_block;
mod densenet;
mod error;
mod gradcam;
mod init;
mod layers;
mod loss;
mod model;
mod pool;
mod residual;
mod se_resnet;
#[cfg(test)]
mod test_util;
mod vector;
mod winograd;

pub use checkpoint::{
    checkpoint_bytes, load_torchvision_backbone, read_meta, safetensors_bytes, tensors_sha256,
    varmap_tensors, BackboneLoad, Checkpoint, CheckpointMeta, Normalization,
};
pub use cpu::CpuInference;
pub use densenet::{DenseNet, DenseNetConfig};
pub use error::{ModelError, Result};
pub use gradcam::{grad_cam, overlay_png, GradCam};
pub use init::reinit_seeded;
pub use layers::{autocast, BatchNorm2d};
pub use loss::{bce_with_logits, dual_head_loss};
pub use model::{is_buffer, parameter_count, trainable_vars, ChestModel, DualLogits, ModelConfig};
pub use pool::MaxPool2d;
pub use se_resnet::{SeResNet, SeResNetConfig};

pub use candle_core;
pub use candle_nn;
