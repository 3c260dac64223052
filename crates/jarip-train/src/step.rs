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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use jarip_model::ModelConfig;

    #[test]
    fn masked_loss_counts_only_masked_targets() {
        let model = Gpt::new(&ModelConfig::tiny(50), 1, &Device::Cpu).unwrap();
        let x = Tensor::from_vec((0..16u32).collect::<Vec<_>>(), (2, 8), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (1..17u32).collect();
        let mask: Vec<f32> = (0..16).map(|i| if i % 3 == 0 { 1.0 } else { 0.0 }).collect();
        let y = Tensor::from_vec(targets.clone(), (2, 8), &Device::Cpu).unwrap();
        let m = Tensor::from_vec(mask.clone(), 16, &Device::Cpu).unwrap();
        let per_token: Vec<f32> = model.token_losses(&x, &y).unwrap().to_vec1().unwrap();
        let (sum, n) =
            per_token.iter().zip(&mask).filter(|(_, &k)| k > 0.0).fold((0f32, 0), |(s, n), (l, _)| (s + l, n + 1));
        let got = masked_loss(&model, &x, &y, &m).unwrap().to_scalar::<f32>().unwrap();
        assert!((got - sum / n as f32).abs() < 1e-5, "{got} vs {}", sum / n as f32);
        // Changing a target the mask leaves out changes neither the loss nor its gradient.
        let mut other = targets.clone();
        other[1] = 42;
        let y2 = Tensor::from_vec(other, (2, 8), &Device::Cpu).unwrap();
        let l2 = masked_loss(&model, &x, &y2, &m).unwrap();
        assert_eq!(l2.to_scalar::<f32>().unwrap(), got);
        let (g1, g2) = (masked_loss(&model, &x, &y, &m).unwrap().backward().unwrap(), l2.backward().unwrap());
        for (name, v) in model.params() {
            let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(d, 0.0, "gradient of {name} depends on an unmasked target");
        }
    }
}
