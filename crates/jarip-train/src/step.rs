//! One optimizer step: forward and backward over the micro-batches that make up the step's
//! batch (gradients summed), then the optimizer update. Shared by `pretrain`, `sft` and the benchmark.

use crate::optim::Optimizer;
use anyhow::{bail, Result};
use candle_core::Tensor;
use jarip_model::Gpt;

pub struct StepOutcome {
    /// Mean training loss over the step's tokens (nats).
    pub loss: f64,
    pub grad_norm: f64,
}

/// Runs forward/backward on each `(inputs, targets)` micro-batch and updates the weights.
/// A non-finite loss or gradient stops before the update, leaving the weights untouched.
pub fn train_step(
    model: &Gpt,
    optim: &mut Optimizer,
    micro: &[(Tensor, Tensor)],
    lr_factor: f64,
) -> Result<StepOutcome> {
    step_with(optim, micro.len(), lr_factor, |i| model.loss(&micro[i].0, &micro[i].1))
}

/// As [`train_step`], counting only the targets whose `mask` (fp32 `[B·T]`, 1 or 0) is 1:
/// supervised fine-tuning learns the assistant's tokens, not the user's.
pub fn train_step_masked(
    model: &Gpt,
    optim: &mut Optimizer,
    micro: &[(Tensor, Tensor, Tensor)],
    lr_factor: f64,
) -> Result<StepOutcome> {
    step_with(optim, micro.len(), lr_factor, |i| masked_loss(model, &micro[i].0, &micro[i].1, &micro[i].2))
}

/// Mean loss over the targets that `mask` counts (0 when it counts none).
pub fn masked_loss(model: &Gpt, x: &Tensor, y: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let losses = model.token_losses(x, y)?;
    let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok(((losses * mask)?.sum_all()? / count as f64)?)
}

fn step_with(
    optim: &mut Optimizer,
    micro: usize,
    lr_factor: f64,
    loss_of: impl Fn(usize) -> Result<Tensor>,
) -> Result<StepOutcome> {
    let mut acc: Option<Vec<Tensor>> = None;
    let mut loss_sum = 0f64;
    for i in 0..micro {
        let loss = loss_of(i)?;
        let l = loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            bail!("loss is {l}");
        }
        loss_sum += l;
        let grads = optim.collect_grads(&loss.backward()?)?;
        acc = Some(match acc {
            None => grads,
            Some(a) => a.iter().zip(&grads).map(|(a, g)| a + g).collect::<candle_core::Result<Vec<_>>>()?,
        });
    }
    let grads = acc.ok_or_else(|| anyhow::anyhow!("a step needs at least one micro-batch"))?;
    let grad_norm = optim.step(&grads, micro, lr_factor)?;
    Ok(StepOutcome { loss: loss_sum / micro as f64, grad_norm })
}
