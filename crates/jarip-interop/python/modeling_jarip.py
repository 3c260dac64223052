"""The jarip decoder in PyTorch, for Hugging Face transformers (written by `jarip export`).

Pre-norm blocks with RMSNorm; attention with per-head RMSNorm on queries and keys (QK-norm),
rotary embeddings (the two halves of each head rotated together) and grouped-query heads; a ReLU²
MLP (`down(relu(up(x))²)`) or SwiGLU (`down(silu(gate(x)) * up(x))`); an output head (its own
matrix, or the embedding's with `tie_word_embeddings`) whose logits are soft-capped as
`cap * tanh(z / cap)`. No biases. Tensor names are jarip's own.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:
    from .configuration_jarip import JaripConfig
except ImportError:  # loaded as a plain module
    from configuration_jarip import JaripConfig


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rotary(x, cos, sin):
    """x: [B, H, T, D]; cos/sin: [T, D/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.h, self.hkv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        c = cfg.hidden_size
        self.q_proj = nn.Linear(c, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(c, self.hkv * self.d, bias=False)
        self.v_proj = nn.Linear(c, self.hkv * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, c, bias=False)
        # QK-norm: RMSNorm with gains on each head's queries and keys (off in Llama-style models).
        self.qk_norm = getattr(cfg, "qk_norm", True)
        if self.qk_norm:
            self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, past):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.d)
        k = self.k_proj(x).view(b, t, self.hkv, self.d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.hkv, self.d).transpose(1, 2)
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)
        rep = self.h // self.hkv
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        s = k.shape[2]
        # Query i (at position s - t + i) sees keys 0..=s - t + i.
        mask = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(diagonal=s - t)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.h * self.d)), present


class Mlp(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c, f = cfg.hidden_size, cfg.intermediate_size
        self.swiglu = cfg.mlp_type == "swiglu"
        if self.swiglu:
            self.gate_proj = nn.Linear(c, f, bias=False)
        self.up_proj = nn.Linear(c, f, bias=False)
        self.down_proj = nn.Linear(f, c, bias=False)

    def forward(self, x):
        up = self.up_proj(x)
        act = F.silu(self.gate_proj(x)) * up if self.swiglu else F.relu(up).square()
        return self.down_proj(act)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x, cos, sin, past):
        a, present = self.self_attn(self.input_layernorm(x), cos, sin, past)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), present


class JaripModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def _legacy_cache(past):
    """A `transformers` Cache object (as newer `generate` passes) → tuple of per-layer (keys,
    values), or None when it holds nothing yet; tuples and None pass through."""
    if past is None or isinstance(past, (tuple, list)):
        return past if past else None
    if past.get_seq_length() == 0:
        return None
    return past.to_legacy_cache()


class JaripForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = JaripConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]

    def __init__(self, config):
        super().__init__(config)
        self.model = JaripModel(config)
        # Tied: the embedding is the head, and the file holds no lm_head.weight.
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls):
        # The cache is a tuple of per-layer (keys, values); recent transformers would otherwise
        # hand `generate` an empty `DynamicCache` on the first step.
        return False

    def _init_weights(self, module):
        pass  # weights always come from the exported file

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def _rotary(self, start, t, device):
        d = self.config.head_dim
        inv = self.config.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
        angles = torch.arange(start, start + t, dtype=torch.float64, device=device)[:, None] * inv[None, :]
        return angles.cos().float(), angles.sin().float()

    def forward(self, input_ids, past_key_values=None, labels=None, use_cache=False, attention_mask=None, **kwargs):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("padded batches are not supported: run sequences one by one (or unpadded)")
        b, t = input_ids.shape
        past_key_values = _legacy_cache(past_key_values)
        start = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if start + t > self.config.max_position_embeddings:
            raise ValueError(f"{start + t} tokens exceed the context of {self.config.max_position_embeddings}")
        cos, sin = self._rotary(start, t, input_ids.device)
        x = self.model.embed_tokens(input_ids)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        presents = []
        for i, layer in enumerate(self.model.layers):
            x, present = layer(x, cos, sin, None if past_key_values is None else past_key_values[i])
            presents.append(present)
        h = self.model.norm(x)
        logits = (F.linear(h, self.model.embed_tokens.weight) if self.lm_head is None else self.lm_head(h)).float()
        cap = self.config.final_logit_softcapping
        if cap:  # None or 0: no soft-cap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=tuple(presents) if use_cache else None)
