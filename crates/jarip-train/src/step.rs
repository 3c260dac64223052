//! One optimizer step: forward and backward over the micro-batches that make up the step's
//! batch (gradients summed), then the optimizer update. Shared by `pretrain` and the benchmark.

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
    let mut acc: Option<Vec<Tensor>> = None;
    let mut loss_sum = 0f64;
    for (x, y) in micro {
        let loss = model.loss(x, y)?;
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
    let grad_norm = optim.step(&grads, micro.len(), lr_factor)?;
    Ok(StepOutcome { loss: loss_sum / micro.len() as f64, grad_norm })
}
