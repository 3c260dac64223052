"""jarip's fused CUDA training kernels compute what their math says, on a machine without a GPU.

g++ compiles crates/jarip-kernels/cuda/train.cu itself, unchanged, through the shim in
tests/python/cuda_emu/ (one std::thread per CUDA thread, blocks in turn, `__syncthreads` a real
barrier, `__shared__` shared by one block's threads), launched with the geometry the Rust side
uses. Every entry point, in f32 and bf16, is compared with a float64 numpy reference written from
the formulas in train.cu's comments; the backward references are themselves checked against
finite differences of the numpy forwards. Every kernel is also run twice over output buffers
pre-filled with two different byte patterns, and must give the same bytes: each output element
is written, and the result does not depend on thread timing.

Tolerances: f32 outputs |got − ref| ≤ 1e-5·|ref| + 1e-5·max|ref| (2e-5 for attention), against
a float64 reference on the same inputs. bf16 outputs are fp32 results rounded once to bf16 (at
most 2⁻⁸ relative), so |got − ref| ≤ 2⁻⁷·|ref| + 1e-4·max|ref|, with the reference computed from
the bf16-rounded inputs.

The tensor-core attention kernels (`attn_*_tc_bf16_d{64,128}`, WMMA emulated by cuda_emu/mma.h)
are checked against the same float64 references. They also round P and dS to bf16 before the
second matrix product, which adds errors of up to ~2⁻⁹·max|ref| on top of the 2⁻⁷·|ref| (over 8
seeds of these shapes, the most seen was 2⁻⁹·⁰), so o, dq, dk and dv there get
|got − ref| ≤ 2⁻⁷·|ref| + 2⁻⁸·max|ref| (lse keeps the f32 attention tolerance), with lse and δ given
exactly as for the scalar kernels. The end-to-end chain (tc forward's o and lse →
attn_bwd_delta_bf16 → tc backward) adds δ's error from the bf16-rounded O (up to ~2⁻⁷·⁶·max|ref|)
and is checked at |got − ref| ≤ 2⁻⁷·|ref| + 2⁻⁶·max|ref|. The WMMA shim itself is checked bit for
bit against a float32 numpy model of its documented sum order.

Needs: g++ with C++20, numpy, pytest. Skipped when g++ is missing.
"""

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EMU = ROOT / "tests" / "python" / "cuda_emu"
TRAIN_CU = ROOT / "crates" / "jarip-kernels" / "cuda" / "train.cu"
DTYPES = ("f32", "bf16")

# ctypes signatures: p pointer, i int, q int64, f float.
SIGS = {
    "rms_norm_fwd": "pppiif",
    "rms_norm_bwd_dx": "pppppiif",
    "rms_norm_bwd_dw_partial": "ppppiii",
    "rms_norm_bwd_dw_sum": "ppii",
    "rope": "ppppiiiiif",
    "attn_bwd_delta": "pppiiii",
    "softcap_ce_fwd": "pppiif",
    "softcap_ce_bwd": "ppppiif",
    "attn_fwd": "pppppiiiiif",
    "attn_bwd_dkdv": "ppppppppiiiiif",
    "attn_bwd_dq": "pppppppiiiiif",
}
# Tensor-core attention entries: bf16 only, the same arguments as their scalar counterparts.
TC_SIGS = {f"{name}_tc": SIGS[name] for name in ("attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq")}
CTYPES = {"p": ctypes.c_void_p, "i": ctypes.c_int, "q": ctypes.c_int64, "f": ctypes.c_float}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed: the CUDA kernels cannot be compiled for CPU emulation")
    so = tmp_path_factory.mktemp("cuda_emu") / "libcuda_emu.so"
    cmd = [gxx, "-O1", "-std=c++20", "-pthread", "-shared", "-fPIC", "-I", str(EMU), str(EMU / "driver.cpp"),
           "-o", str(so)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"compiling {TRAIN_CU} under the CPU shim failed:\n{res.stderr}"
    dll = ctypes.CDLL(str(so))
    for name, sig in SIGS.items():
        for s in DTYPES:
            fn = getattr(dll, f"emu_{name}_{s}")
            fn.argtypes = [CTYPES[c] for c in sig]
            fn.restype = ctypes.c_int if name.startswith("attn_") and name != "attn_bwd_delta" else None
    for name, sig in TC_SIGS.items():
        fn = getattr(dll, f"emu_{name}_bf16")
        fn.argtypes = [CTYPES[c] for c in sig]
        fn.restype = ctypes.c_int
    dll.emu_wmma_selftest.argtypes = [CTYPES[c] for c in "ppppppppi"]
    dll.emu_wmma_selftest.restype = None
    dll.emu_adamw_multi.argtypes = [CTYPES[c] for c in "pppifffffffi"]
    dll.emu_adamw_multi.restype = None
    for fn in (dll.emu_f32_to_bf16, dll.emu_bf16_to_f32):
        fn.argtypes = [CTYPES[c] for c in "ppq"]
        fn.restype = None
    return dll


# ---- buffers --------------------------------------------------------------------------------------


def f32_to_bf16(x):
    """float32 -> bf16 bits, round to nearest even (NaN -> 0x7FFF), as CUDA's __float2bfloat16."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where((u & 0x7FFFFFFF) > 0x7F800000, np.uint16(0x7FFF), r)


def bf16_to_f32(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def dev(x, dtype):
    """(buffer the kernel reads, the float64 values it holds) for the values x."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "bf16":
        b = f32_to_bf16(x32)
        return b, bf16_to_f32(b).astype(np.float64)
    return x32, x32.astype(np.float64)


def out(shape, dtype, fill):
    """An output buffer whose every byte is `fill` (0xFF is NaN in f32 and bf16)."""
    a = np.empty(shape, dtype=np.uint16 if dtype == "bf16" else np.float32)
    a.view(np.uint8).fill(fill)
    return a


def val(a):
    """float64 values of a kernel's output buffer."""
    return (bf16_to_f32(a) if a.dtype == np.uint16 else a).astype(np.float64)


def p(a):
    assert a.flags.c_contiguous
    return a.ctypes.data


def twice(call):
    """Runs call(fill) -> outputs over buffers pre-filled with two byte patterns; both runs must give
    identical bytes (so every element was written, and deterministically). Returns the outputs."""
    first = call(0xFF)
    second = call(0x7F)
    for i, (a, b) in enumerate(zip(first, second)):
        assert a.tobytes() == b.tobytes(), f"output {i} differs between two runs (or is not fully written)"
    return first


def check(got, ref, dtype, what, f32_tol=1e-5, bf16_atol=1e-4):
    """bf16_atol is relative to max|ref|."""
    got = val(got) if isinstance(got, np.ndarray) and got.dtype in (np.uint16, np.float32) else got
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    if dtype == "bf16":
        rtol, atol = 2.0**-7, bf16_atol * scale
    else:
        rtol, atol = f32_tol, f32_tol * scale
    assert got.shape == ref.shape, what
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol, err_msg=f"{what} ({dtype})")


def rng(seed):
    return np.random.default_rng(seed)


# ---- numpy references (float64, from the formulas in train.cu) ------------------------------------


def ref_rms_fwd(x, w, eps):
    r = 1.0 / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + eps)
    return x * r * w, r[:, 0]


def ref_rms_bwd(x, w, dy, eps):
    C = x.shape[1]
    r = 1.0 / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + eps)
    g = dy * w
    dx = r * g - r**3 * x * np.sum(g * x, axis=1, keepdims=True) / C
    dw = np.sum(dy * x * r, axis=0)
    return dx, dw, r[:, 0]


def rope_tables(tmax, D, base=10000.0):
    f = base ** (-np.arange(D // 2) * 2.0 / D)
    ang = np.arange(tmax)[:, None] * f[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def ref_rope(x, cos, sin, offset, sign):
    T, half = x.shape[1], x.shape[3] // 2
    c = cos[offset:offset + T][None, :, None, :].astype(np.float64)
    s = sign * sin[offset:offset + T][None, :, None, :].astype(np.float64)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)


def ref_attn(q, k, v, scale):
    """o [B,T,H,D], lse [B,H,T] of causal softmax attention, head h reading kv head h // (H/Hkv)."""
    B, T, H, D = q.shape
    rep = H // k.shape[2]
    o = np.zeros_like(q)
    lse = np.zeros((B, H, T))
    mask = np.tril(np.ones((T, T), dtype=bool))
    for b in range(B):
        for h in range(H):
            g = h // rep
            s = np.where(mask, q[b, :, h] @ k[b, :, g].T * scale, -np.inf)
            m = s.max(axis=1, keepdims=True)
            l = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
            o[b, :, h] = np.exp(s - l[:, None]) @ v[b, :, g]
            lse[b, h] = l
    return o, lse


def ref_attn_bwd(q, k, v, do, scale):
    B, T, H, D = q.shape
    rep = H // k.shape[2]
    o, lse = ref_attn(q, k, v, scale)
    delta = np.einsum("bthd,bthd->bht", do, o)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
    mask = np.tril(np.ones((T, T), dtype=bool))
    for b in range(B):
        for h in range(H):
            g = h // rep
            s = np.where(mask, q[b, :, h] @ k[b, :, g].T * scale, -np.inf)
            pm = np.exp(s - lse[b, h][:, None])
            dp = do[b, :, h] @ v[b, :, g].T
            ds = pm * (dp - delta[b, h][:, None])
            dq[b, :, h] = scale * ds @ k[b, :, g]
            dk[b, :, g] += scale * ds.T @ q[b, :, h]
            dv[b, :, g] += pm.T @ do[b, :, h]
    return dq, dk, dv, lse, delta


def capped(l, cap):
    return cap * np.tanh(l / cap) if cap > 0 else l


def ref_ce(logits, targets, dloss, cap):
    z = capped(logits, cap)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    rows = np.arange(len(targets))
    loss = lse - z[rows, targets]
    dz = np.exp(z - lse[:, None])
    dz[rows, targets] -= 1.0
    dz *= dloss[:, None]
    dl = dz * (1.0 - (z / cap) ** 2) if cap > 0 else dz
    return loss, dl


def numgrad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        x0 = x[i]
        x[i] = x0 + h
        fp = f()
        x[i] = x0 - h
        fm = f()
        x[i] = x0
        g[i] = (fp - fm) / (2 * h)
    return g


def test_references_match_finite_differences():
    """The backward references are the gradients of the forward references."""
    r = rng(0)
    x, w, dy = r.standard_normal((3, 7)), r.standard_normal(7), r.standard_normal((3, 7))
    dx, dw, _ = ref_rms_bwd(x, w, dy, 1e-5)
    loss = lambda: np.sum(ref_rms_fwd(x, w, 1e-5)[0] * dy)  # noqa: E731
    np.testing.assert_allclose(dx, numgrad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numgrad(loss, w), rtol=1e-6, atol=1e-8)

    q, k, v = r.standard_normal((1, 5, 4, 3)), r.standard_normal((1, 5, 2, 3)), r.standard_normal((1, 5, 2, 3))
    do = r.standard_normal((1, 5, 4, 3))
    dq, dk, dv, _, _ = ref_attn_bwd(q, k, v, do, 0.7)
    loss = lambda: np.sum(ref_attn(q, k, v, 0.7)[0] * do)  # noqa: E731
    for name, a, g in (("dq", q, dq), ("dk", k, dk), ("dv", v, dv)):
        np.testing.assert_allclose(g, numgrad(loss, a), rtol=1e-6, atol=1e-8, err_msg=name)

    logits, t, dl = r.standard_normal((2, 9)) * 6, np.array([3, 8]), r.standard_normal(2)
    for cap in (5.0, 0.0):
        _, g = ref_ce(logits, t, dl, cap)
        loss = lambda: np.sum(ref_ce(logits, t, dl, cap)[0] * dl)  # noqa: E731
        np.testing.assert_allclose(g, numgrad(loss, logits), rtol=1e-6, atol=1e-8, err_msg=f"cap {cap}")


# ---- the shim's bf16 casts ----------------------------------------------------------------------------


def test_bf16_casts_round_to_nearest_even(lib):
    special = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F80FFFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000,
                        0xFF800000, 0x7FC00000, 0xFFC12345, 0x7F800001, 0x80000000, 0x00000001, 0x00018000],
                       dtype=np.uint32).view(np.float32)
    want = np.array([0x3F80, 0x3F82, 0x3F81, 0x3F81, 0x7F80, 0xFF80, 0x7F80, 0xFF80, 0x7FFF, 0x7FFF, 0x7FFF,
                     0x8000, 0x0000, 0x0002], dtype=np.uint16)
    assert f32_to_bf16(special).tolist() == want.tolist()
    x = np.concatenate([special, rng(1).standard_normal(4096).astype(np.float32) * 100])
    got = np.empty(x.size, dtype=np.uint16)
    lib.emu_f32_to_bf16(p(x), p(got), x.size)
    assert got.tolist() == f32_to_bf16(x).tolist()
    back = np.empty(x.size, dtype=np.float32)
    lib.emu_bf16_to_f32(p(got), p(back), x.size)
    assert back.view(np.uint32).tolist() == bf16_to_f32(got).view(np.uint32).tolist()


# ---- RMSNorm -------------------------------------------------------------------------------------------

EPS = 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [40, 300])
def test_rms_norm_fwd(lib, dtype, C):
    N = 5
    r = rng(2)
    x, xr = dev(r.standard_normal((N, C)) * 2, dtype)
    w, wr = dev(1 + 0.3 * r.standard_normal(C), dtype)
    fn = getattr(lib, f"emu_rms_norm_fwd_{dtype}")

    def call(fill):
        y = out((N, C), dtype, fill)
        fn(p(x), p(w), p(y), N, C, EPS)
        return (y,)

    (y,) = twice(call)
    check(y, ref_rms_fwd(xr, wr, EPS)[0], dtype, "rms_norm_fwd y")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [40, 300])
def test_rms_norm_bwd(lib, dtype, C):
    N = 5
    r = rng(3)
    x, xr = dev(r.standard_normal((N, C)) * 2, dtype)
    w, wr = dev(1 + 0.3 * r.standard_normal(C), dtype)
    dy, dyr = dev(r.standard_normal((N, C)), dtype)
    dx_ref, dw_ref, rstd_ref = ref_rms_bwd(xr, wr, dyr, EPS)

    fn = getattr(lib, f"emu_rms_norm_bwd_dx_{dtype}")

    def call_dx(fill):
        dx, rstd = out((N, C), dtype, fill), out(N, "f32", fill)
        fn(p(x), p(w), p(dy), p(dx), p(rstd), N, C, EPS)
        return dx, rstd

    dx, rstd = twice(call_dx)
    check(dx, dx_ref, dtype, "rms_norm_bwd_dx dx")
    check(rstd, rstd_ref, "f32", "rms_norm_bwd_dx rstd")

    rstd_in = rstd_ref.astype(np.float32)
    part_fn = getattr(lib, f"emu_rms_norm_bwd_dw_partial_{dtype}")
    sum_fn = getattr(lib, f"emu_rms_norm_bwd_dw_sum_{dtype}")
    for chunks in (2, 5, 8):  # 5 = N is what the Rust side picks for N = 5; 8 > N leaves chunks empty
        rows = -(-N // chunks)
        part_ref = np.zeros((chunks, C))
        for c in range(chunks):
            sl = slice(c * rows, min(N, (c + 1) * rows))
            part_ref[c] = np.sum(dyr[sl] * xr[sl] * rstd_in[sl, None], axis=0)

        def call_part(fill):
            part = out((chunks, C), "f32", fill)
            part_fn(p(x), p(dy), p(rstd_in), p(part), N, C, chunks)
            return (part,)

        (part,) = twice(call_part)
        # partial sums are fp32 even for bf16 inputs
        check(part, part_ref, "f32", f"rms_norm_bwd_dw_partial ({chunks} chunks, {dtype} inputs)")

        def call_sum(fill):
            dw = out(C, dtype, fill)
            sum_fn(p(part), p(dw), C, chunks)
            return (dw,)

        (dw,) = twice(call_sum)
        check(dw, part.astype(np.float64).sum(axis=0), dtype, f"rms_norm_bwd_dw_sum ({chunks} chunks)")
        check(dw, dw_ref, dtype, f"rms_norm dw end to end ({chunks} chunks)")


# ---- RoPE ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope(lib, dtype):
    B, T, H, D, offset = 2, 7, 3, 16, 2  # 336 pairs: two blocks, the second partial
    cos, sin = rope_tables(T + offset + 3, D)
    x, xr = dev(rng(4).standard_normal((B, T, H, D)), dtype)
    fn = getattr(lib, f"emu_rope_{dtype}")
    for sign in (1.0, -1.0):

        def call(fill, sign=sign):
            y = out((B, T, H, D), dtype, fill)
            fn(p(x), p(y), p(cos), p(sin), B, T, H, D, offset, sign)
            return (y,)

        (y,) = twice(call)
        check(y, ref_rope(xr, cos, sin, offset, sign), dtype, f"rope sign {sign}")
        if dtype == "f32" and sign == 1.0:
            back = out((B, T, H, D), dtype, 0)
            fn(p(y), p(back), p(cos), p(sin), B, T, H, D, offset, -1.0)
            check(back, xr, dtype, "rope backward undoes forward")


# ---- attention -----------------------------------------------------------------------------------------

ATTN_CASES = [  # B, T, H, Hkv, D: T = 70 leaves partial 64- and 32-row tiles
    (2, 70, 4, 2, 32),
    (1, 70, 2, 2, 64),
    (1, 40, 2, 1, 128),
]


def attn_inputs(case, dtype, seed):
    B, T, H, Hkv, D = case
    r = rng(seed)
    q = dev(r.standard_normal((B, T, H, D)) * 1.5, dtype)
    k = dev(r.standard_normal((B, T, Hkv, D)) * 1.5, dtype)
    v = dev(r.standard_normal((B, T, Hkv, D)), dtype)
    do = dev(r.standard_normal((B, T, H, D)), dtype)
    return q, k, v, do


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "B{}T{}H{}Hkv{}D{}".format(*c))
def test_attn_fwd(lib, dtype, case):
    B, T, H, Hkv, D = case
    scale = D**-0.5
    (q, qr), (k, kr), (v, vr), _ = attn_inputs(case, dtype, 5)
    fn = getattr(lib, f"emu_attn_fwd_{dtype}")

    def call(fill):
        o, lse = out((B, T, H, D), dtype, fill), out((B, H, T), "f32", fill)
        assert fn(p(q), p(k), p(v), p(o), p(lse), B, T, H, Hkv, D, scale) == 0
        return o, lse

    o, lse = twice(call)
    o_ref, lse_ref = ref_attn(qr, kr, vr, scale)
    check(o, o_ref, dtype, "attn_fwd o", f32_tol=2e-5)
    check(lse, lse_ref, "f32", "attn_fwd lse", f32_tol=2e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "B{}T{}H{}Hkv{}D{}".format(*c))
def test_attn_bwd(lib, dtype, case):
    B, T, H, Hkv, D = case
    scale = D**-0.5
    (q, qr), (k, kr), (v, vr), (do, dor) = attn_inputs(case, dtype, 6)
    dq_ref, dk_ref, dv_ref, lse_ref, delta_ref = ref_attn_bwd(qr, kr, vr, dor, scale)

    # δ from O (here the reference O in the kernel's dtype) and dO
    o, orr = dev(ref_attn(qr, kr, vr, scale)[0], dtype)
    delta_fn = getattr(lib, f"emu_attn_bwd_delta_{dtype}")

    def call_delta(fill):
        delta = out((B, H, T), "f32", fill)
        delta_fn(p(o), p(do), p(delta), B, T, H, D)
        return (delta,)

    (delta,) = twice(call_delta)
    check(delta, np.einsum("bthd,bthd->bht", dor, orr), "f32", f"attn_bwd_delta ({dtype} inputs)")

    lse_in = np.ascontiguousarray(lse_ref, dtype=np.float32)
    delta_in = np.ascontiguousarray(delta_ref, dtype=np.float32)
    dkdv_fn = getattr(lib, f"emu_attn_bwd_dkdv_{dtype}")
    dq_fn = getattr(lib, f"emu_attn_bwd_dq_{dtype}")

    def call_dkdv(fill):
        dk, dv = out((B, T, Hkv, D), dtype, fill), out((B, T, Hkv, D), dtype, fill)
        assert dkdv_fn(p(q), p(k), p(v), p(do), p(lse_in), p(delta_in), p(dk), p(dv), B, T, H, Hkv, D, scale) == 0
        return dk, dv

    def call_dq(fill):
        dq = out((B, T, H, D), dtype, fill)
        assert dq_fn(p(q), p(k), p(v), p(do), p(lse_in), p(delta_in), p(dq), B, T, H, Hkv, D, scale) == 0
        return (dq,)

    dk, dv = twice(call_dkdv)
    (dq,) = twice(call_dq)
    check(dk, dk_ref, dtype, "attn_bwd_dkdv dk", f32_tol=2e-5)
    check(dv, dv_ref, dtype, "attn_bwd_dkdv dv", f32_tol=2e-5)
    check(dq, dq_ref, dtype, "attn_bwd_dq dq", f32_tol=2e-5)


def test_attn_rejects_unbuilt_head_size(lib):
    z = np.zeros(64, dtype=np.float32)
    assert lib.emu_attn_fwd_f32(p(z), p(z), p(z), p(z), p(z), 1, 1, 1, 1, 16, 1.0) == -1
    assert lib.emu_attn_fwd_tc_bf16(p(z), p(z), p(z), p(z), p(z), 1, 1, 1, 1, 32, 1.0) == -1


# ---- tensor-core attention (bf16, D = 64 and 128; WMMA through cuda_emu/mma.h) ----------------------

TC_CASES = [  # B, T, H, Hkv, D: T = 70 and 40 leave partial 32-row tiles
    (1, 70, 4, 2, 64),
    (1, 70, 2, 1, 128),
    (2, 40, 2, 2, 64),
]
TC_ATOL = 2.0**-8  # see the module docstring
TC_CHAIN_ATOL = 2.0**-6


def tc_ids(c):
    return "B{}T{}H{}Hkv{}D{}".format(*c)


def once(call):
    """call(fill) over buffers of 0xFF bytes (NaN), for a run whose determinism is checked elsewhere."""
    return call(0xFF)


def run_attn_fwd_tc(lib, case, q, k, v, scale, runs=twice):
    B, T, H, Hkv, D = case

    def call(fill):
        o, lse = out((B, T, H, D), "bf16", fill), out((B, H, T), "f32", fill)
        assert lib.emu_attn_fwd_tc_bf16(p(q), p(k), p(v), p(o), p(lse), B, T, H, Hkv, D, scale) == 0
        return o, lse

    return runs(call)


def run_attn_bwd_tc(lib, case, q, k, v, do, lse, delta, scale, runs=twice):
    B, T, H, Hkv, D = case

    def call_dkdv(fill):
        dk, dv = out((B, T, Hkv, D), "bf16", fill), out((B, T, Hkv, D), "bf16", fill)
        assert lib.emu_attn_bwd_dkdv_tc_bf16(p(q), p(k), p(v), p(do), p(lse), p(delta), p(dk), p(dv), B, T, H, Hkv,
                                             D, scale) == 0
        return dk, dv

    def call_dq(fill):
        dq = out((B, T, H, D), "bf16", fill)
        assert lib.emu_attn_bwd_dq_tc_bf16(p(q), p(k), p(v), p(do), p(lse), p(delta), p(dq), B, T, H, Hkv, D,
                                           scale) == 0
        return (dq,)

    dk, dv = runs(call_dkdv)
    (dq,) = runs(call_dq)
    return dq, dk, dv


@pytest.mark.parametrize("case", TC_CASES, ids=tc_ids)
def test_attn_fwd_tc(lib, case):
    D = case[4]
    scale = D**-0.5
    (q, qr), (k, kr), (v, vr), _ = attn_inputs(case, "bf16", 5)
    o, lse = run_attn_fwd_tc(lib, case, q, k, v, scale)
    o_ref, lse_ref = ref_attn(qr, kr, vr, scale)
    check(o, o_ref, "bf16", "attn_fwd_tc o", bf16_atol=TC_ATOL)
    check(lse, lse_ref, "f32", "attn_fwd_tc lse", f32_tol=2e-5)


@pytest.mark.parametrize("case", TC_CASES, ids=tc_ids)
def test_attn_bwd_tc(lib, case):
    B, T, H, Hkv, D = case
    scale = D**-0.5
    (q, qr), (k, kr), (v, vr), (do, dor) = attn_inputs(case, "bf16", 6)
    dq_ref, dk_ref, dv_ref, lse_ref, delta_ref = ref_attn_bwd(qr, kr, vr, dor, scale)

    # Each kernel on exact lse and δ.
    lse_in = np.ascontiguousarray(lse_ref, dtype=np.float32)
    delta_in = np.ascontiguousarray(delta_ref, dtype=np.float32)
    dq, dk, dv = run_attn_bwd_tc(lib, case, q, k, v, do, lse_in, delta_in, scale)
    check(dk, dk_ref, "bf16", "attn_bwd_dkdv_tc dk", bf16_atol=TC_ATOL)
    check(dv, dv_ref, "bf16", "attn_bwd_dkdv_tc dv", bf16_atol=TC_ATOL)
    check(dq, dq_ref, "bf16", "attn_bwd_dq_tc dq", bf16_atol=TC_ATOL)

    # The chain training runs: tc forward -> δ from its bf16 O (attn_bwd_delta_bf16) -> tc backward
    # (each run once: the runs above checked that they repeat).
    o, lse = run_attn_fwd_tc(lib, case, q, k, v, scale, runs=once)
    delta = out((B, H, T), "f32", 0xFF)
    lib.emu_attn_bwd_delta_bf16(p(o), p(do), p(delta), B, T, H, D)
    check(delta, np.einsum("bthd,bthd->bht", dor, val(o)), "f32", "attn_bwd_delta on the tc forward's O")
    dq, dk, dv = run_attn_bwd_tc(lib, case, q, k, v, do, lse, delta, scale, runs=once)
    check(dk, dk_ref, "bf16", "tc chain dk", bf16_atol=TC_CHAIN_ATOL)
    check(dv, dv_ref, "bf16", "tc chain dv", bf16_atol=TC_CHAIN_ATOL)
    check(dq, dq_ref, "bf16", "tc chain dq", bf16_atol=TC_CHAIN_ATOL)


# ---- the WMMA shim (cuda_emu/mma.h) itself -----------------------------------------------------------


def aligned(x, align=64):
    """A copy of x whose data starts at a multiple of `align` bytes (WMMA loads need 32)."""
    x = np.ascontiguousarray(x)
    raw = np.empty(x.nbytes + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    a = raw[off:off + x.nbytes].view(x.dtype).reshape(x.shape)
    a[...] = x
    return a


def mma_model(a, b, c):
    """The shim's mma_sync in float32: per (m, n), products summed over k in order, then + c."""
    s = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    for k in range(a.shape[1]):
        s = s + a[:, k:k + 1] * b[k:k + 1, :]  # float32 products of bf16 values are exact
    return s + c


@pytest.mark.parametrize("use_c", [1, 0], ids=["a.b+c", "a.b"])
def test_wmma_shim_product(lib, use_c):
    """A 16×32·32×16 product in two k steps, by warp 0 from row-major tiles and by warp 1 from
    col-major ones (and a col-major accumulator load and store), equals numpy's."""
    r = rng(9)
    a = f32_to_bf16(r.standard_normal((16, 32)).astype(np.float32))
    b = f32_to_bf16(r.standard_normal((32, 16)).astype(np.float32))
    c = r.standard_normal((16, 16)).astype(np.float32)
    bufs = [aligned(x) for x in (a, b, a.T, b.T, c, c.T)]
    d_row, d_col = aligned(np.full((16, 16), np.nan, np.float32)), aligned(np.full((16, 16), np.nan, np.float32))
    lib.emu_wmma_selftest(*(p(x) for x in bufs), p(d_row), p(d_col), use_c)
    af, bf = bf16_to_f32(a), bf16_to_f32(b)
    c0 = c if use_c else np.zeros_like(c)
    want = mma_model(af[:, 16:], bf[16:], mma_model(af[:, :16], bf[:16], c0))
    assert d_row.tobytes() == want.tobytes(), "row-major warp"
    assert np.ascontiguousarray(d_col.T).tobytes() == want.tobytes(), "col-major warp"
    np.testing.assert_allclose(d_row, af.astype(np.float64) @ bf + c0, rtol=1e-5, atol=1e-5)


MISUSE = [  # (what, the message emu_wmma_misuse must abort with)
    (0, "is not 256-bit aligned (address mod 32 = 16)"),
    (1, "ldm 12 is not a multiple of 8 elements (16 bytes)"),
    (2, "ldm 6 is not a multiple of 4 elements (16 bytes)"),
    (3, "called by a warp of which only 16 of 32 lanes are still running"),
    (4, "arrive from different calls (divergent warp): wmma::"),
]


def test_wmma_shim_rejects_misuse(lib):
    """Misaligned pointers, bad ldm, calls by partly exited or divergent warps abort (in a child
    process), each with one line naming what went wrong."""
    for what, msg in MISUSE:
        script = (f"import ctypes\nlib = ctypes.CDLL({lib._name!r})\nbuf = ctypes.create_string_buffer(8192)\n"
                  "a = ctypes.addressof(buf) + (-ctypes.addressof(buf)) % 64\n"
                  f"lib.emu_wmma_misuse(ctypes.c_void_p(a), ctypes.c_void_p(a + 4096), {what})\n")
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert res.returncode != 0, (what, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], (what, lines)
        if what < 4:
            fn = "store_matrix_sync" if what >= 2 else "load_matrix_sync"
            assert lines[0].startswith(f"cuda_emu: wmma::{fn} in block (0,0,0), thread "), lines


# ---- soft-capped cross-entropy -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cap", [15.0, 0.0])
def test_softcap_ce(lib, dtype, cap):
    R, V = 3, 300
    r = rng(7)
    logits, lr_ = dev(r.standard_normal((R, V)) * 8, dtype)
    targets = np.array([0, 299, 123], dtype=np.uint32)
    dloss = (r.standard_normal(R) * 0.5).astype(np.float32)
    loss_ref, dl_ref = ref_ce(lr_, targets.astype(np.int64), dloss.astype(np.float64), cap)
    fwd = getattr(lib, f"emu_softcap_ce_fwd_{dtype}")
    bwd = getattr(lib, f"emu_softcap_ce_bwd_{dtype}")

    def call_fwd(fill):
        loss = out(R, "f32", fill)
        fwd(p(logits), p(targets), p(loss), R, V, cap)
        return (loss,)

    def call_bwd(fill):
        dl = out((R, V), dtype, fill)
        bwd(p(logits), p(targets), p(dloss), p(dl), R, V, cap)
        return (dl,)

    (loss,) = twice(call_fwd)
    (dl,) = twice(call_bwd)
    check(loss, loss_ref, "f32", f"softcap_ce_fwd loss ({dtype} logits, cap {cap})")
    check(dl, dl_ref, dtype, f"softcap_ce_bwd dlogits (cap {cap})")


# ---- AdamW ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(300, 1, 777), (5, 0, 1030)])
def test_adamw_multi(lib, sizes):
    r = rng(8)
    lr, b1, b2, eps, step, scale = 3e-3, 0.9, 0.95, 1e-8, 3, 0.5
    bc1, bc2 = 1 - b1**step, 1 - b2**step
    wd = np.array([0.1, 0.0, 0.05], dtype=np.float32)
    state0 = [[r.standard_normal(n).astype(np.float32),  # p
               r.standard_normal(n).astype(np.float32),  # g
               (0.1 * r.standard_normal(n)).astype(np.float32),  # m
               (0.01 * r.random(n)).astype(np.float32)]  # v
              for n in sizes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def call(_fill):
        st = [[a.copy() for a in t] for t in state0]
        ptrs = np.array([a.ctypes.data for t in st for a in t], dtype=np.uint64)
        lib.emu_adamw_multi(p(ptrs), p(offsets), p(wd), len(sizes), lr, b1, b2, eps, bc1, bc2, scale, 4)
        return [a for t in st for a in t]

    got = twice(call)
    for i, (p0, g, m0, v0) in enumerate(state0):
        p0, g, m0, v0 = (a.astype(np.float64) for a in (p0, g, m0, v0))
        gh = g * scale
        m = b1 * m0 + (1 - b1) * gh
        v = b2 * v0 + (1 - b2) * gh * gh
        pn = p0 * (1 - lr * float(wd[i])) - lr * (m / bc1) / (np.sqrt(v / bc2) + eps)
        pg, gg, mg, vg = got[4 * i:4 * i + 4]
        check(pg, pn, "f32", f"adamw p of tensor {i}")
        assert gg.tobytes() == state0[i][1].tobytes(), "adamw must not write the gradient"
        check(mg, m, "f32", f"adamw m of tensor {i}")
        check(vg, v, "f32", f"adamw v of tensor {i}")
