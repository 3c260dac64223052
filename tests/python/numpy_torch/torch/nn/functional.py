"""torch.nn.functional of the NumPy stand-in."""

import math

import numpy as np

from .._impl import Tensor, _floating, missing, module_getattr

__getattr__ = module_getattr("torch.nn.functional")


def _same_float_dtype(name, *ts):
    if len({t.dtype for t in ts}) != 1 or not ts[0].dtype.is_floating_point:
        raise RuntimeError(f"{name}: expected tensors of one float dtype, got {[t.dtype for t in ts]}")


def linear(input, weight, bias=None):
    """`input @ weight.T + bias`, weight laid out [out_features, in_features]."""
    ts = (input, weight) if bias is None else (input, weight, bias)
    _same_float_dtype("linear", *ts)
    y = np.matmul(input._a, weight._a.T)
    return Tensor(y if bias is None else y + bias._a)


def embedding(input, weight):
    if input.dtype.is_floating_point or input.dtype.name == "bool":
        raise RuntimeError(f"embedding: indices must be an integer tensor, got {input.dtype}")
    ids = input._a
    if ids.size and (ids.min() < 0 or ids.max() >= weight.shape[0]):
        raise IndexError(f"embedding: index out of range [0, {weight.shape[0]})")
    return Tensor(weight._a[ids])


def relu(input, inplace=False):
    if inplace:
        raise missing("F.relu(inplace=True)")
    return Tensor(np.maximum(_floating(input, "relu"), 0))


def silu(input, inplace=False):
    if inplace:
        raise missing("F.silu(inplace=True)")
    x = _floating(input, "silu")
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative x: silu is -0 there
        return Tensor(x / (1 + np.exp(-x)))


def _softmax_last(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q kᵀ / √E + mask) v over the last two dims; a bool mask is True where attention is allowed."""
    if dropout_p != 0.0:
        raise missing("scaled_dot_product_attention(dropout_p != 0)")
    if is_causal:
        raise missing("scaled_dot_product_attention(is_causal=True)")
    if scale is not None:
        raise missing("scaled_dot_product_attention(scale=...)")
    if enable_gqa:
        raise missing("scaled_dot_product_attention(enable_gqa=True)")
    _same_float_dtype("scaled_dot_product_attention", query, key, value)
    q, k, v = query._a, key._a, value._a
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise RuntimeError(f"scaled_dot_product_attention: shapes q {q.shape}, k {k.shape}, v {v.shape} do not match")
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * (1 / math.sqrt(q.shape[-1]))
    if attn_mask is not None:
        if attn_mask.dtype.name == "bool":
            s = np.where(attn_mask._a, s, -np.inf)
        elif attn_mask.dtype is query.dtype:
            s = s + attn_mask._a
        else:
            raise RuntimeError(f"scaled_dot_product_attention: attn_mask of dtype {attn_mask.dtype}")
    return Tensor(np.matmul(_softmax_last(s), v))


def cross_entropy(input, target, ignore_index=-100, reduction="mean"):
    """Mean over targets ≠ ignore_index of −log softmax(input)[target]; input [N, C], target [N]."""
    if reduction != "mean":
        raise missing(f"F.cross_entropy(reduction={reduction!r})")
    x = _floating(input, "cross_entropy")
    if x.ndim != 2 or target.ndim != 1 or target.dtype.is_floating_point:
        raise missing("F.cross_entropy beyond class indices [N] for logits [N, C]")
    t = target._a
    keep = t != ignore_index
    m = x.max(-1, keepdims=True)
    logp = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
    rows = np.nonzero(keep)[0]
    return Tensor(np.asarray(-logp[rows, t[rows]].mean()))
