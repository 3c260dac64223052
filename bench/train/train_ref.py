"""PyTorch reference for jarip's training-step benchmark: the same model and step, fp32, CPU
(or `--device cuda`: bf16 autocast with `--bf16`, fused AdamW, timed with synchronisation; peak
GPU memory reserved is reported — `scripts/gpu-check` runs it beside jarip on the same GPU).

Model (as jarip-model): token embedding; per block pre-norm RMSNorm (learned gain), q/k/v
projections, QK-norm (RMSNorm over each head), rotary embeddings (half split, base 10000),
causal attention (n_kv_head = n_head), output projection, pre-norm ReLU² MLP (4x); final
RMSNorm; untied head; logits soft-capped at 15 in fp32; cross-entropy. No biases.
`--arch llama|qwen3` runs jarip's presets of those families: SwiGLU MLP of 8/3·C rounded up to a
multiple of 64, no soft-cap, RoPE base 500k/1M, and (llama) no QK-norm.
AdamW (lr 1e-3, betas 0.9/0.95, wd 0.1 on matrices and head) with grad clipping at 1.0.

Prints one JSON line: median ms/step over --steps after --warmup, tokens/s, MFU, peak RSS.

Data-parallel: started by `torchrun --nproc-per-node N`, the ranks share each step's --accum
micro-batches through DistributedDataParallel (gloo backend, CPU); rank 0 prints.
"""

import argparse
import contextlib
import json
import math
import os
import resource
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, cos, sin):  # x: [B, T, H, D]
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    def __init__(self, c, h, hidden, swiglu=False, qk_norm=True):
        super().__init__()
        self.h, self.d = h, c // h
        self.attn_norm = RMSNorm(c)
        self.q = nn.Linear(c, c, bias=False)
        self.k = nn.Linear(c, c, bias=False)
        self.v = nn.Linear(c, c, bias=False)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = RMSNorm(self.d)
            self.k_norm = RMSNorm(self.d)
        self.o = nn.Linear(c, c, bias=False)
        self.mlp_norm = RMSNorm(c)
        self.gate = nn.Linear(c, hidden, bias=False) if swiglu else None
        self.up = nn.Linear(c, hidden, bias=False)
        self.down = nn.Linear(hidden, c, bias=False)

    def forward(self, x, cos, sin):
        b, t, c = x.shape
        h = self.attn_norm(x)
        q = self.q(h).view(b, t, self.h, self.d)
        k = self.k(h).view(b, t, self.h, self.d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        v = self.v(h).view(b, t, self.h, self.d)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.o(y.transpose(1, 2).reshape(b, t, c))
        hn = self.mlp_norm(x)
        if self.gate is not None:
            return x + self.down(F.silu(self.gate(hn)) * self.up(hn))
        return x + self.down(F.relu(self.up(hn)).square())


class GPT(nn.Module):
    def __init__(self, vocab, depth, seq_len, arch="jarip"):
        super().__init__()
        c, h = depth * 64, depth
        swiglu = arch != "jarip"
        hidden = math.ceil(math.ceil(8 * c / 3) / 64) * 64 if swiglu else 4 * c
        self.cap = 15.0 if arch == "jarip" else None
        base = {"jarip": 10000.0, "llama": 500000.0, "qwen3": 1000000.0}[arch]
        self.embed = nn.Embedding(vocab, c)
        self.blocks = nn.ModuleList([Block(c, h, hidden, swiglu, arch != "llama") for _ in range(depth)])
        self.norm = RMSNorm(c)
        self.head = nn.Linear(c, vocab, bias=False)
        d = c // h
        inv = base ** (-torch.arange(0, d, 2).float() / d)
        ang = torch.arange(seq_len).float()[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", ang.sin()[None, :, None, :], persistent=False)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.embed(idx)
        cos, sin = self.cos[:, :t], self.sin[:, :t]
        for blk in self.blocks:
            x = blk(x, cos, sin)
        logits = self.head(self.norm(x)).float()
        if self.cap:
            logits = self.cap * torch.tanh(logits / self.cap)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-gflops", type=float, default=269.0)
    p.add_argument("--accum", type=int, default=1, help="micro-batches per step, over all ranks")
    p.add_argument("--arch", choices=["jarip", "llama", "qwen3"], default="jarip")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    p.add_argument("--bf16", action="store_true",
                   help="PyTorch's bf16 autocast on the CPU (matmuls in bf16, fp32 master weights and optimizer)")
    a = p.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if a.accum % world:
        raise SystemExit(f"--accum {a.accum} cannot be split among {world} ranks")
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = GPT(a.vocab, a.depth, a.seq_len, a.arch).to(dev)
    step_model = torch.compile(model) if a.compile else model
    ddp = None
    if world > 1:
        dist.init_process_group("gloo")
        ddp = DistributedDataParallel(model)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95),
        **({"fused": True} if dev.type == "cuda" else {}),
    )
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    params = sum(p.numel() for p in model.parameters())
    c = a.depth * 64
    tokens = a.batch * a.seq_len * a.accum
    local = a.accum // world
    torch.manual_seed(1 + rank)
    # Same FLOP formula as jarip: 6 per non-embedding parameter per token + causal attention.
    flops_per_token = 6 * (params - a.vocab * c) + 12 * a.depth * c * a.seq_len / 2
    times, loss = [], float("nan")
    for i in range(a.warmup + a.steps):
        idx = torch.randint(0, a.vocab, (local, a.batch, a.seq_len + 1), device=dev)
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for j in range(local):
            # DDP all-reduces the gradients on the last micro-batch's backward only.
            quiet = ddp.no_sync() if ddp is not None and j < local - 1 else contextlib.nullcontext()
            cast = torch.autocast(dev.type, dtype=torch.bfloat16) if a.bf16 else contextlib.nullcontext()
            with quiet:
                with cast:
                    l = (ddp or step_model)(idx[j, :, :-1], idx[j, :, 1:]) / local
                l.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = l.item() * local
        sync()
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
    if ddp is not None:
        dist.destroy_process_group()
        if rank != 0:
            return
    times.sort()
    med = times[len(times) // 2]
    flops = flops_per_token * tokens
    print(json.dumps({
        # The default architecture is not named: a row's label says "jarip" only for jarip itself.
        "impl": f"pytorch {torch.__version__} {'bf16 autocast' if a.bf16 else 'fp32'}{'' if a.arch == 'jarip' else ' ' + a.arch}{' compiled' if a.compile else ''}"
                + (" (CUDA, SDPA, fused AdamW)" if dev.type == "cuda" else f" ({world} rank{'s' if world > 1 else ''} x {torch.get_num_threads()} threads)"),
        "params": params,
        "ms_per_step": med * 1e3,
        "tokens_per_s": tokens / med,
        "gflops_per_step": flops / 1e9,
        "mfu": flops / med / (a.peak_gflops * 1e9),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
        "final_loss": loss,
        **({"gpu_mem_mb": torch.cuda.max_memory_reserved() / 1e6} if dev.type == "cuda" else {}),
    }))


if __name__ == "__main__":
    main()
