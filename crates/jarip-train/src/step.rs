//! One optimizer step: forward and backward over the micro-batches that make up the step's
//! batch (gradients summed), then the optimizer update. Shared by `pretrain`, `sft` and the benchmark.

use crate::dist::DataParallel;
use crate::optim::Optimizer;
use anyhow::{bail, Result};
use candle_core::Tensor;
use jarip_kernels::pool::on_pool;
use jarip_model::Gpt;

pub struct StepOutcome {
    /// Mean training loss over the step's tokens (nats).
    pub loss: f64,
    pub grad_norm: f64,
    /// Seconds spent adding gradients across data-parallel ranks (0 in one process).
    pub exchange_s: f64,
}

/// Runs forward/backward on each `(inputs, targets)` micro-batch and updates the weights.
/// A non-finite loss or gradient stops before the update, leaving the weights untouched.
pub fn train_step(
    model: &Gpt,
    optim: &mut Optimizer,
    micro: &[(Tensor, Tensor)],
    lr_factor: f64,
) -> Result<StepOutcome> {
    let loss_of = |i: usize| model.loss(&micro[i].0, &micro[i].1);
    train_step_with(optim, micro.len(), lr_factor, loss_of, DataParallel::solo())
}

/// As [`train_step`], counting only the targets whose `mask` (fp32 `[B·T]`, 1 or 0) is 1:
/// supervised fine-tuning learns the assistant's tokens, not the user's.
pub fn train_step_masked(
    model: &Gpt,
    optim: &mut Optimizer,
    micro: &[(Tensor, Tensor, Tensor)],
    lr_factor: f64,
) -> Result<StepOutcome> {
    let loss_of = |i: usize| masked_loss(model, &micro[i].0, &micro[i].1, &micro[i].2);
    train_step_with(optim, micro.len(), lr_factor, loss_of, DataParallel::solo())
}

/// Mean loss over the targets that `mask` counts (0 when it counts none).
pub fn masked_loss(model: &Gpt, x: &Tensor, y: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let losses = model.token_losses(x, y)?;
    let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok(((losses * mask)?.sum_all()? / count as f64)?)
}

/// Gradients (in optimizer order) and loss, summed over micro-batches `range` in order.
fn block_sum(
    optim: &Optimizer,
    range: std::ops::Range<usize>,
    loss_of: &impl Fn(usize) -> Result<Tensor>,
) -> Result<(Vec<Tensor>, f64)> {
    let mut acc: Option<Vec<Tensor>> = None;
    let mut loss_sum = 0f64;
    for i in range {
        let loss = loss_of(i)?;
        let l = loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            bail!("loss is {l} (not finite)");
        }
        loss_sum += l;
        let grads = optim.collect_grads(&loss.backward()?)?;
        acc = Some(match acc {
            None => grads,
            Some(a) => add_all(&a, &grads)?,
        });
    }
    Ok((acc.ok_or_else(|| anyhow::anyhow!("a step needs at least one micro-batch"))?, loss_sum))
}

fn add_all(a: &[Tensor], b: &[Tensor]) -> Result<Vec<Tensor>> {
    Ok(a.iter().zip(b).map(|(a, b)| a + b).collect::<candle_core::Result<Vec<_>>>()?)
}

/// One optimizer step over `accum` micro-batches whose loss `loss_of(i)` computes (building
/// micro-batch `i` on demand), shared among data-parallel replicas: this process runs only its
/// own blocks' micro-batches, each block's gradients are summed in order and the blocks' sums
/// added in block order (across ranks by `dp`'s collective), then the weights are updated.
/// A non-finite loss on any rank stops every rank before the update.
pub fn train_step_with(
    optim: &mut Optimizer,
    accum: usize,
    lr_factor: f64,
    loss_of: impl Fn(usize) -> Result<Tensor> + Sync,
    dp: DataParallel,
) -> Result<StepOutcome> {
    let blocks = dp.blocks(accum)?;
    // The blocks this process stands for, each summed alone and then added in block order, as
    // ranks' sums are (one running total: no more memory than one replica needs).
    let sum_blocks = || {
        let mut total: Option<(Vec<Tensor>, f64)> = None;
        for r in blocks {
            let (g, l) = block_sum(optim, r, &loss_of)?;
            total = Some(match total {
                None => (g, l),
                Some((a, la)) => (add_all(&a, &g)?, la + l),
            });
        }
        total.ok_or_else(|| anyhow::anyhow!("a step needs at least one micro-batch"))
    };
    // On the CPU, forward and backward run on one of rayon's threads, where every kernel's
    // parallel loop splits on the spot (`on_pool`); collectives stay on the calling thread.
    let cpu = optim.on_cpu();
    let local = if cpu { on_pool(sum_blocks) } else { sum_blocks() };
    // A rank whose loss is not finite stops every rank, before any gradient is exchanged.
    let (mut grads, mut loss_sum) = crate::dist::agree_ok(dp.comm, local)?;
    let t = std::time::Instant::now();
    if dp.comm.world_size() > 1 {
        grads = dp.comm.sum_tensors(grads)?;
        let all = dp.comm.all_gather(&loss_sum.to_le_bytes())?;
        loss_sum = all.iter().map(|b| f64::from_le_bytes(b[..8].try_into().expect("8 bytes"))).sum();
    }
    let exchange_s = t.elapsed().as_secs_f64();
    let grad_norm =
        if cpu { on_pool(|| optim.step(&grads, accum, lr_factor))? } else { optim.step(&grads, accum, lr_factor)? };
    Ok(StepOutcome { loss: loss_sum / accum as f64, grad_norm, exchange_s })
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
