// jarip's fused CUDA training kernels (the GPU side of `--kernels fused`), compiled to PTX by
// nvcc at build time (crates/jarip-kernels/build.rs) and loaded by `jarip_kernels::cuda`.
//
// Every kernel reads bf16 or fp32 and computes in fp32. None uses atomics: every sum is taken
// in an order fixed by the code (a shared-memory tree of fixed shape, or a loop), so a run on
// one GPU gives the same bits every time — the deterministic mode replay needs is the only mode.
// Block-wide sums therefore avoid warp shuffles, whose order is also fixed but which a CPU
// emulation of these kernels (tests/python/test_cuda_emu.py) could not run.
//
// Layouts (all contiguous, row-major):
//   x, y, dy           [N, C]            RMSNorm rows
//   q, o, dq, do       [B, T, H, D]      attention queries/outputs (as the projections give them)
//   k, v, dk, dv       [B, T, Hkv, D]    grouped key/value heads, head h reads kv head h / (H/Hkv)
//   lse, delta         [B, H, T] fp32    per-row log-sum-exp of the scaled scores, rowsum(dO ⊙ O)
//   cos, sin           [Tmax, D/2] fp32  rotary tables; pairs are (i, i + D/2) ("half-split")
//   logits, dlogits    [R, V]            head outputs of R rows, targets [R] u32

#include <cuda_bf16.h>
#include <mma.h>
#include <stdint.h>

using namespace nvcuda;

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float *p, size_t i, float x) { p[i] = x; }
// Round to nearest even, as candle's own casts do.
__device__ __forceinline__ void st(bf16 *p, size_t i, float x) { p[i] = __float2bfloat16(x); }

// The sum of every thread's `v`, returned to all of them. blockDim.x must be a power of two
// no larger than the scratch `sh`. The tree's shape depends only on blockDim.x.
__device__ float block_sum(float v, float *sh) {
    unsigned t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

__device__ float block_max(float v, float *sh) {
    unsigned t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] = fmaxf(sh[t], sh[t + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

#define REDUCE_THREADS 256

// ---------------------------------------------------------------------------------------------
// RMSNorm.   r = (mean_c x² + eps)^(-1/2),   y = x·r·w
// backward:  g = dy ⊙ w,   dx = r·g − r³·x·(g·x)/C,   dw = Σ_rows dy ⊙ x·r
// One block per row for y and dx (dx's kernel also writes r, which dw's kernels read); dw sums
// rows in chunks (one partial row per chunk), then the partials in chunk order.
// ---------------------------------------------------------------------------------------------

template <typename T>
__device__ void rms_norm_fwd(const T *x, const T *w, T *y, int C, float eps) {
    __shared__ float sh[REDUCE_THREADS];
    size_t row = (size_t)blockIdx.x * C;
    float ss = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float v = ld(x, row + c);
        ss += v * v;
    }
    float r = rsqrtf(block_sum(ss, sh) / C + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x) st(y, row + c, ld(x, row + c) * r * ld(w, c));
}

template <typename T>
__device__ void rms_norm_bwd_dx(const T *x, const T *w, const T *dy, T *dx, float *rstd, int C, float eps) {
    __shared__ float sh[REDUCE_THREADS];
    size_t row = (size_t)blockIdx.x * C;
    float ss = 0.f, gx = 0.f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float xv = ld(x, row + c);
        ss += xv * xv;
        gx += ld(dy, row + c) * ld(w, c) * xv;
    }
    float r = rsqrtf(block_sum(ss, sh) / C + eps);
    float dot = block_sum(gx, sh);
    float k = r * r * r * dot / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        st(dx, row + c, r * ld(dy, row + c) * ld(w, c) - k * ld(x, row + c));
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

// partial[chunk, c] = Σ_{n in chunk} dy[n, c]·x[n, c]·r[n];  grid (⌈C/256⌉, chunks).
template <typename T>
__device__ void rms_norm_bwd_dw_partial(const T *x, const T *dy, const float *rstd, float *partial, int N, int C,
                                        int rows_per_chunk) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    int n0 = blockIdx.y * rows_per_chunk;
    int n1 = min(N, n0 + rows_per_chunk);
    float acc = 0.f;
    for (int n = n0; n < n1; n++) acc += ld(dy, (size_t)n * C + c) * ld(x, (size_t)n * C + c) * rstd[n];
    partial[(size_t)blockIdx.y * C + c] = acc;
}

template <typename T>
__device__ void rms_norm_bwd_dw_sum(const float *partial, T *dw, int C, int chunks) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.f;
    for (int k = 0; k < chunks; k++) acc += partial[(size_t)k * C + c];
    st(dw, c, acc);
}

// ---------------------------------------------------------------------------------------------
// RoPE, half-split pairs (x_i, x_{i+D/2}) at position p = t + offset, angle θ = p·f_i:
//   forward   (x₁, x₂) → (x₁cosθ − x₂sinθ, x₁sinθ + x₂cosθ)
//   backward  the transpose rotation: the same with sinθ negated (sign = −1).
// One thread per pair.
// ---------------------------------------------------------------------------------------------

template <typename T>
__device__ void rope(const T *x, T *y, const float *cos, const float *sin, int T_, int H, int D, int offset,
                     float sign, size_t pairs) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= pairs) return;
    int half = D / 2;
    size_t row = idx / ((size_t)H * half);  // b·T + t
    int rest = (int)(idx % ((size_t)H * half));
    int h = rest / half, i = rest % half;
    int p = (int)(row % T_) + offset;
    size_t a = row * H * D + (size_t)h * D + i;
    float x1 = ld(x, a), x2 = ld(x, a + half);
    float c = cos[(size_t)p * half + i], s = sign * sin[(size_t)p * half + i];
    st(y, a, x1 * c - x2 * s);
    st(y, a + half, x1 * s + x2 * c);
}

// ---------------------------------------------------------------------------------------------
// Causal attention with grouped KV heads, flash style (no T×T matrix):
//   s_ij = (q_i·k_j)·scale for j ≤ i,   o_i = Σ_j softmax_j(s_i)·v_j,   lse_i = log Σ_j e^{s_ij}
// backward (P recomputed from lse):
//   p_ij = e^{s_ij − lse_i},  δ_i = dO_i·O_i,  dv_j = Σ_i p_ij dO_i,  ds_ij = p_ij (dO_i·v_j − δ_i),
//   dq_i = scale Σ_j ds_ij k_j,  dk_j = scale Σ_{i, heads of the group} ds_ij q_i
// Forward: a block holds FWD_Q queries of one (b, h), one thread per query, and walks key tiles
// of KT keys in shared memory; per tile it takes the tile's max once (online softmax). dK/dV: a
// block holds KT keys of one (b, kv head), one thread per key, and walks the group's heads and
// the query tiles at or after its keys. dQ: one thread per query walking key tiles. Each
// gradient is summed by one thread in a fixed order (heads, then positions), so no atomics.
// ---------------------------------------------------------------------------------------------

#define FWD_Q 64
#define KT 32
#define QT 8

template <typename T, int D>
__device__ void attn_fwd(const T *q, const T *k, const T *v, T *o, float *lse, int T_, int H, int Hkv, float scale) {
    __shared__ float ks[KT][D + 1];
    __shared__ float vs[KT][D + 1];
    int bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / Hkv);
    int i = blockIdx.x * FWD_Q + threadIdx.x;
    bool live = i < T_;
    float qr[D], acc[D];
    size_t qa = (((size_t)b * T_ + (live ? i : 0)) * H + h) * D;
    for (int d = 0; d < D; d++) {
        qr[d] = live ? ld(q, qa + d) * scale : 0.f;
        acc[d] = 0.f;
    }
    float m = -INFINITY, l = 0.f;
    int kend = min(T_, (int)(blockIdx.x + 1) * FWD_Q);
    for (int j0 = 0; j0 < kend; j0 += KT) {
        for (int e = threadIdx.x; e < KT * D; e += blockDim.x) {
            int jj = e / D, d = e % D, j = j0 + jj;
            size_t ka = (((size_t)b * T_ + j) * Hkv + g) * D + d;
            ks[jj][d] = j < T_ ? ld(k, ka) : 0.f;
            vs[jj][d] = j < T_ ? ld(v, ka) : 0.f;
        }
        __syncthreads();
        float sc[KT];
        float mt = -INFINITY;
        for (int jj = 0; jj < KT; jj++) {
            int j = j0 + jj;
            float s = -INFINITY;
            if (live && j <= i) {
                s = 0.f;
                for (int d = 0; d < D; d++) s += qr[d] * ks[jj][d];
            }
            sc[jj] = s;
            mt = fmaxf(mt, s);
        }
        float mn = fmaxf(m, mt);
        if (mn > -INFINITY) {
            float corr = __expf(m - mn);
            l *= corr;
            for (int d = 0; d < D; d++) acc[d] *= corr;
            for (int jj = 0; jj < KT; jj++) {
                float p = __expf(sc[jj] - mn);
                l += p;
                for (int d = 0; d < D; d++) acc[d] += p * vs[jj][d];
            }
            m = mn;
        }
        __syncthreads();
    }
    if (live) {
        float inv = 1.f / l;
        for (int d = 0; d < D; d++) st(o, qa + d, acc[d] * inv);
        lse[(size_t)bh * T_ + i] = m + logf(l);
    }
}

// δ = rowsum(dO ⊙ O), one thread per (b, h, i).
template <typename T>
__device__ void attn_bwd_delta(const T *o, const T *dout, float *delta, int B, int T_, int H, int D) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * H * T_) return;
    int i = (int)(idx % T_);
    size_t bh = idx / T_;
    int b = (int)(bh / H), h = (int)(bh % H);
    size_t a = (((size_t)b * T_ + i) * H + h) * D;
    float s = 0.f;
    for (int d = 0; d < D; d++) s += ld(dout, a + d) * ld(o, a + d);
    delta[idx] = s;
}

template <typename T, int D>
__device__ void attn_bwd_dkdv(const T *q, const T *k, const T *v, const T *dout, const float *lse,
                              const float *delta, T *dk, T *dv, int T_, int H, int Hkv, float scale) {
    __shared__ float ks[KT][D + 1];
    __shared__ float vs[KT][D + 1];
    __shared__ float qs[QT][D + 1];
    __shared__ float dos[QT][D + 1];
    __shared__ float ls[QT], ds_[QT];
    int bg = blockIdx.y, b = bg / Hkv, g = bg % Hkv, rep = H / Hkv;
    int j0 = blockIdx.x * KT, t = threadIdx.x, j = j0 + t;
    bool live = j < T_;
    for (int e = t; e < KT * D; e += blockDim.x) {
        int jj = e / D, d = e % D, jr = j0 + jj;
        size_t ka = (((size_t)b * T_ + jr) * Hkv + g) * D + d;
        ks[jj][d] = jr < T_ ? ld(k, ka) : 0.f;
        vs[jj][d] = jr < T_ ? ld(v, ka) : 0.f;
    }
    float dka[D], dva[D];
    for (int d = 0; d < D; d++) dka[d] = dva[d] = 0.f;
    __syncthreads();
    for (int r = 0; r < rep; r++) {
        int h = g * rep + r;
        for (int i0 = j0; i0 < T_; i0 += QT) {
            for (int e = t; e < QT * D; e += blockDim.x) {
                int ii = e / D, d = e % D, i = i0 + ii;
                size_t qa = (((size_t)b * T_ + i) * H + h) * D + d;
                qs[ii][d] = i < T_ ? ld(q, qa) : 0.f;
                dos[ii][d] = i < T_ ? ld(dout, qa) : 0.f;
            }
            for (int ii = t; ii < QT; ii += blockDim.x) {
                int i = i0 + ii;
                size_t la = ((size_t)b * H + h) * T_ + i;
                ls[ii] = i < T_ ? lse[la] : 0.f;
                ds_[ii] = i < T_ ? delta[la] : 0.f;
            }
            __syncthreads();
            if (live) {
                for (int ii = 0; ii < QT; ii++) {
                    int i = i0 + ii;
                    if (i >= T_ || i < j) continue;
                    float s = 0.f, dp = 0.f;
                    for (int d = 0; d < D; d++) {
                        s += qs[ii][d] * ks[t][d];
                        dp += dos[ii][d] * vs[t][d];
                    }
                    float p = __expf(s * scale - ls[ii]);
                    float dsv = p * (dp - ds_[ii]) * scale;
                    for (int d = 0; d < D; d++) {
                        dva[d] += p * dos[ii][d];
                        dka[d] += dsv * qs[ii][d];
                    }
                }
            }
            __syncthreads();
        }
    }
    if (live) {
        size_t ka = (((size_t)b * T_ + j) * Hkv + g) * D;
        for (int d = 0; d < D; d++) {
            st(dk, ka + d, dka[d]);
            st(dv, ka + d, dva[d]);
        }
    }
}

template <typename T, int D>
__device__ void attn_bwd_dq(const T *q, const T *k, const T *v, const T *dout, const float *lse, const float *delta,
                            T *dq, int T_, int H, int Hkv, float scale) {
    __shared__ float qs[KT][D + 1];
    __shared__ float dos[KT][D + 1];
    __shared__ float ks[QT][D + 1];
    __shared__ float vs[QT][D + 1];
    int bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / Hkv);
    int i0 = blockIdx.x * KT, t = threadIdx.x, i = i0 + t;
    bool live = i < T_;
    for (int e = t; e < KT * D; e += blockDim.x) {
        int ii = e / D, d = e % D, ir = i0 + ii;
        size_t qa = (((size_t)b * T_ + ir) * H + h) * D + d;
        qs[ii][d] = ir < T_ ? ld(q, qa) : 0.f;
        dos[ii][d] = ir < T_ ? ld(dout, qa) : 0.f;
    }
    float li = live ? lse[(size_t)bh * T_ + i] : 0.f;
    float di = live ? delta[(size_t)bh * T_ + i] : 0.f;
    float dqa[D];
    for (int d = 0; d < D; d++) dqa[d] = 0.f;
    int kend = min(T_, i0 + KT);
    for (int j0 = 0; j0 < kend; j0 += QT) {
        __syncthreads();
        for (int e = t; e < QT * D; e += blockDim.x) {
            int jj = e / D, d = e % D, j = j0 + jj;
            size_t ka = (((size_t)b * T_ + j) * Hkv + g) * D + d;
            ks[jj][d] = j < T_ ? ld(k, ka) : 0.f;
            vs[jj][d] = j < T_ ? ld(v, ka) : 0.f;
        }
        __syncthreads();
        if (!live) continue;
        for (int jj = 0; jj < QT; jj++) {
            int j = j0 + jj;
            if (j > i) break;
            float s = 0.f, dp = 0.f;
            for (int d = 0; d < D; d++) {
                s += qs[t][d] * ks[jj][d];
                dp += dos[t][d] * vs[jj][d];
            }
            float p = __expf(s * scale - li);
            float dsv = p * (dp - di) * scale;
            for (int d = 0; d < D; d++) dqa[d] += dsv * ks[jj][d];
        }
    }
    if (live) {
        size_t qa = (((size_t)b * T_ + i) * H + h) * D;
        for (int d = 0; d < D; d++) st(dq, qa + d, dqa[d]);
    }
}

// ---------------------------------------------------------------------------------------------
// The same attention on tensor cores (bf16, head sizes 64 and 128): the products Q·Kᵀ, P·V,
// Pᵀ·dO, dSᵀ·Q, dO·Vᵀ and dS·K run as 16×16×16 WMMA tiles with fp32 accumulation; P and dS are
// rounded to bf16 before their products (as FlashAttention does). A block is two warps over a
// tile of 32 queries (forward, dQ) or 32 keys (dK/dV), each warp owning 16 rows; the online
// softmax and the element-wise steps go through shared memory, one thread per row or element.
// Fragments are never indexed (their layout across lanes is the hardware's), so the kernels
// only load, store, fill and multiply them. The products' internal order is the tensor cores'
// own, fixed for a GPU model: runs repeat bit for bit on one kind of GPU.
// ---------------------------------------------------------------------------------------------

#define TC 32

template <int D>
__device__ void tc_load_rows(bf16 (*dst)[D], const bf16 *src, int row0, int T_, int heads, int head, int b) {
    for (int e = threadIdx.x; e < TC * D; e += blockDim.x) {
        int r = e / D, d = e % D, i = row0 + r;
        dst[r][d] = i < T_ ? src[(((size_t)b * T_ + i) * heads + head) * D + d] : __float2bfloat16(0.f);
    }
}

// Writes a warp's 16×D fp32 accumulators to `out` rows row0.. (bf16), through a 16×16 stage.
template <int D>
__device__ void tc_store_rows(wmma::fragment<wmma::accumulator, 16, 16, 16, float> *acc, float *stage, bf16 *out,
                              int row0, int T_, int heads, int head, int b, const float *row_scale) {
    int lane = threadIdx.x % 32;
    for (int c = 0; c < D / 16; c++) {
        wmma::store_matrix_sync(stage, acc[c], 16, wmma::mem_row_major);
        __syncthreads();
        for (int e = lane; e < 256; e += 32) {
            int r = e / 16, d = c * 16 + e % 16, i = row0 + r;
            float x = stage[e] * (row_scale ? row_scale[r] : 1.f);
            if (i < T_) out[(((size_t)b * T_ + i) * heads + head) * D + d] = __float2bfloat16(x);
        }
        __syncthreads();
    }
}

// Two products of a warp's 16 rows against the 32 rows of two tiles: o1 = A1·B1ᵀ, o2 = A2·B2ᵀ
// (A: 16×D from `a1`/`a2`, row-major with stride D; B: 32×D tiles; o: 16×32 fp32, row-major).
template <int D>
__device__ void tc_products_t(const bf16 *a1, const bf16 (*b1)[D], const bf16 *a2, const bf16 (*b2)[D], float *o1,
                              float *o2) {
    for (int n = 0; n < TC / 16; n++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> s1, s2;
        wmma::fill_fragment(s1, 0.f);
        wmma::fill_fragment(s2, 0.f);
        for (int kk = 0; kk < D / 16; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> x1, x2;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> y1, y2;
            wmma::load_matrix_sync(x1, a1 + kk * 16, D);
            wmma::load_matrix_sync(x2, a2 + kk * 16, D);
            wmma::load_matrix_sync(y1, &b1[n * 16][kk * 16], D);
            wmma::load_matrix_sync(y2, &b2[n * 16][kk * 16], D);
            wmma::mma_sync(s1, x1, y1, s1);
            wmma::mma_sync(s2, x2, y2, s2);
        }
        wmma::store_matrix_sync(o1 + n * 16, s1, TC, wmma::mem_row_major);
        wmma::store_matrix_sync(o2 + n * 16, s2, TC, wmma::mem_row_major);
    }
}

template <int D>
__device__ void attn_fwd_tc(const bf16 *q, const bf16 *k, const bf16 *v, bf16 *o, float *lse, int T_, int H, int Hkv,
                            float scale) {
    __shared__ __align__(32) bf16 qs[TC][D];
    __shared__ __align__(32) bf16 ks[TC][D];
    __shared__ __align__(32) bf16 vs[TC][D];
    __shared__ __align__(32) float sc[2][16][TC];
    __shared__ __align__(32) bf16 ps[2][16][TC];
    __shared__ __align__(32) float ob[2][16][D];
    __shared__ float m_s[2][16], l_s[2][16], c_s[2][16];
    int bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / Hkv);
    int q0 = blockIdx.x * TC, t = threadIdx.x, warp = t / 32, lane = t % 32;
    tc_load_rows<D>(qs, q, q0, T_, H, h, b);
    if (t < TC) {
        m_s[t / 16][t % 16] = -INFINITY;
        l_s[t / 16][t % 16] = 0.f;
    }
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> of[D / 16];
    for (int c = 0; c < D / 16; c++) wmma::fill_fragment(of[c], 0.f);
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> qf[D / 16];
    for (int kk = 0; kk < D / 16; kk++) wmma::load_matrix_sync(qf[kk], &qs[warp * 16][kk * 16], D);
    int kend = min(T_, q0 + TC);
    for (int j0 = 0; j0 < kend; j0 += TC) {
        tc_load_rows<D>(ks, k, j0, T_, Hkv, g, b);
        tc_load_rows<D>(vs, v, j0, T_, Hkv, g, b);
        __syncthreads();
        // S = Q·Kᵀ: this warp's 16 queries against the tile's 32 keys.
        for (int n = 0; n < TC / 16; n++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
            wmma::fill_fragment(s, 0.f);
            for (int kk = 0; kk < D / 16; kk++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> kf;
                wmma::load_matrix_sync(kf, &ks[n * 16][kk * 16], D);
                wmma::mma_sync(s, qf[kk], kf, s);
            }
            wmma::store_matrix_sync(&sc[warp][0][n * 16], s, TC, wmma::mem_row_major);
        }
        __syncthreads();
        // Online softmax, one thread per query row.
        if (lane < 16) {
            int r = lane, i = q0 + warp * 16 + r;
            float mo = m_s[warp][r], mt = -INFINITY;
            for (int jj = 0; jj < TC; jj++) {
                int j = j0 + jj;
                float s = (i < T_ && j <= i) ? sc[warp][r][jj] * scale : -INFINITY;
                sc[warp][r][jj] = s;
                mt = fmaxf(mt, s);
            }
            float mn = fmaxf(mo, mt);
            float corr = mn == -INFINITY ? 1.f : __expf(mo - mn);
            float l = l_s[warp][r] * corr;
            for (int jj = 0; jj < TC; jj++) {
                float p = mn == -INFINITY ? 0.f : __expf(sc[warp][r][jj] - mn);
                l += p;
                ps[warp][r][jj] = __float2bfloat16(p);
            }
            m_s[warp][r] = mn;
            l_s[warp][r] = l;
            c_s[warp][r] = corr;
        }
        __syncthreads();
        // O ← O·corr (per row, through shared memory), then O += P·V.
        for (int c = 0; c < D / 16; c++) wmma::store_matrix_sync(&ob[warp][0][c * 16], of[c], D, wmma::mem_row_major);
        __syncthreads();
        for (int e = lane; e < 16 * D; e += 32) ob[warp][e / D][e % D] *= c_s[warp][e / D];
        __syncthreads();
        for (int c = 0; c < D / 16; c++) {
            wmma::load_matrix_sync(of[c], &ob[warp][0][c * 16], D, wmma::mem_row_major);
            for (int kk = 0; kk < TC / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> pf;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> vf;
                wmma::load_matrix_sync(pf, &ps[warp][0][kk * 16], TC);
                wmma::load_matrix_sync(vf, &vs[kk * 16][c * 16], D);
                wmma::mma_sync(of[c], pf, vf, of[c]);
            }
        }
        __syncthreads();
    }
    // o = O / l, lse = m + log l.
    if (lane < 16) c_s[warp][lane] = 1.f / l_s[warp][lane];
    __syncthreads();
    tc_store_rows<D>(of, &sc[warp][0][0], o, q0 + warp * 16, T_, H, h, b, c_s[warp]);
    if (lane < 16) {
        int i = q0 + warp * 16 + lane;
        if (i < T_) lse[(size_t)bh * T_ + i] = m_s[warp][lane] + logf(l_s[warp][lane]);
    }
}

// dK, dV of 32 keys (a warp per 16) over the group's heads and the query tiles at or after them:
//   Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, Pᵀ = e^{Sᵀ·scale − lse}, dSᵀ = Pᵀ ⊙ (dPᵀ − δ)·scale,
//   dV += Pᵀ·dO, dK += dSᵀ·Q.
template <int D>
__device__ void attn_bwd_dkdv_tc(const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse,
                                 const float *delta, bf16 *dk, bf16 *dv, int T_, int H, int Hkv, float scale) {
    __shared__ __align__(32) bf16 ks[TC][D];
    __shared__ __align__(32) bf16 vs[TC][D];
    __shared__ __align__(32) bf16 qs[TC][D];
    __shared__ __align__(32) bf16 dos[TC][D];
    __shared__ __align__(32) float st[2][16][TC];
    __shared__ __align__(32) float dpt[2][16][TC];
    __shared__ __align__(32) bf16 pt[2][16][TC];
    __shared__ __align__(32) bf16 dst[2][16][TC];
    __shared__ float ls[TC], dl[TC];
    int bg = blockIdx.y, b = bg / Hkv, g = bg % Hkv, rep = H / Hkv;
    int j0 = blockIdx.x * TC, t = threadIdx.x, warp = t / 32, lane = t % 32;
    tc_load_rows<D>(ks, k, j0, T_, Hkv, g, b);
    tc_load_rows<D>(vs, v, j0, T_, Hkv, g, b);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> dkf[D / 16], dvf[D / 16];
    for (int c = 0; c < D / 16; c++) {
        wmma::fill_fragment(dkf[c], 0.f);
        wmma::fill_fragment(dvf[c], 0.f);
    }
    __syncthreads();
    for (int r = 0; r < rep; r++) {
        int h = g * rep + r;
        for (int i0 = j0; i0 < T_; i0 += TC) {
            tc_load_rows<D>(qs, q, i0, T_, H, h, b);
            tc_load_rows<D>(dos, dout, i0, T_, H, h, b);
            for (int ii = t; ii < TC; ii += blockDim.x) {
                int i = i0 + ii;
                size_t la = ((size_t)b * H + h) * T_ + i;
                ls[ii] = i < T_ ? lse[la] : 0.f;
                dl[ii] = i < T_ ? delta[la] : 0.f;
            }
            __syncthreads();
            tc_products_t<D>(&ks[warp * 16][0], qs, &vs[warp * 16][0], dos, &st[warp][0][0], &dpt[warp][0][0]);
            __syncthreads();
            for (int e = lane; e < 16 * TC; e += 32) {
                int jj = e / TC, ii = e % TC, j = j0 + warp * 16 + jj, i = i0 + ii;
                float p = (i < T_ && j <= i) ? __expf(st[warp][jj][ii] * scale - ls[ii]) : 0.f;
                pt[warp][jj][ii] = __float2bfloat16(p);
                dst[warp][jj][ii] = __float2bfloat16(p * (dpt[warp][jj][ii] - dl[ii]) * scale);
            }
            __syncthreads();
            for (int c = 0; c < D / 16; c++) {
                for (int kk = 0; kk < TC / 16; kk++) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> pf, sf;
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> of, qf;
                    wmma::load_matrix_sync(pf, &pt[warp][0][kk * 16], TC);
                    wmma::load_matrix_sync(sf, &dst[warp][0][kk * 16], TC);
                    wmma::load_matrix_sync(of, &dos[kk * 16][c * 16], D);
                    wmma::load_matrix_sync(qf, &qs[kk * 16][c * 16], D);
                    wmma::mma_sync(dvf[c], pf, of, dvf[c]);
                    wmma::mma_sync(dkf[c], sf, qf, dkf[c]);
                }
            }
            __syncthreads();
        }
    }
    tc_store_rows<D>(dkf, &st[warp][0][0], dk, j0 + warp * 16, T_, Hkv, g, b, nullptr);
    tc_store_rows<D>(dvf, &st[warp][0][0], dv, j0 + warp * 16, T_, Hkv, g, b, nullptr);
}

// dQ of 32 queries (a warp per 16): S = Q·Kᵀ, dP = dO·Vᵀ, dS = P ⊙ (dP − δ)·scale, dQ += dS·K.
template <int D>
__device__ void attn_bwd_dq_tc(const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse,
                               const float *delta, bf16 *dq, int T_, int H, int Hkv, float scale) {
    __shared__ __align__(32) bf16 qs[TC][D];
    __shared__ __align__(32) bf16 dos[TC][D];
    __shared__ __align__(32) bf16 ks[TC][D];
    __shared__ __align__(32) bf16 vs[TC][D];
    __shared__ __align__(32) float sc[2][16][TC];
    __shared__ __align__(32) float dps[2][16][TC];
    __shared__ __align__(32) bf16 dss[2][16][TC];
    __shared__ float ls[TC], dl[TC];
    int bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / Hkv);
    int i0 = blockIdx.x * TC, t = threadIdx.x, warp = t / 32, lane = t % 32;
    tc_load_rows<D>(qs, q, i0, T_, H, h, b);
    tc_load_rows<D>(dos, dout, i0, T_, H, h, b);
    for (int ii = t; ii < TC; ii += blockDim.x) {
        int i = i0 + ii;
        ls[ii] = i < T_ ? lse[(size_t)bh * T_ + i] : 0.f;
        dl[ii] = i < T_ ? delta[(size_t)bh * T_ + i] : 0.f;
    }
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> dqf[D / 16];
    for (int c = 0; c < D / 16; c++) wmma::fill_fragment(dqf[c], 0.f);
    __syncthreads();
    int kend = min(T_, i0 + TC);
    for (int j0 = 0; j0 < kend; j0 += TC) {
        tc_load_rows<D>(ks, k, j0, T_, Hkv, g, b);
        tc_load_rows<D>(vs, v, j0, T_, Hkv, g, b);
        __syncthreads();
        tc_products_t<D>(&qs[warp * 16][0], ks, &dos[warp * 16][0], vs, &sc[warp][0][0], &dps[warp][0][0]);
        __syncthreads();
        for (int e = lane; e < 16 * TC; e += 32) {
            int r = e / TC, jj = e % TC, i = i0 + warp * 16 + r, j = j0 + jj;
            int li = warp * 16 + r;
            float p = (i < T_ && j <= i) ? __expf(sc[warp][r][jj] * scale - ls[li]) : 0.f;
            dss[warp][r][jj] = __float2bfloat16(p * (dps[warp][r][jj] - dl[li]) * scale);
        }
        __syncthreads();
        for (int c = 0; c < D / 16; c++) {
            for (int kk = 0; kk < TC / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> sf;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> kf;
                wmma::load_matrix_sync(sf, &dss[warp][0][kk * 16], TC);
                wmma::load_matrix_sync(kf, &ks[kk * 16][c * 16], D);
                wmma::mma_sync(dqf[c], sf, kf, dqf[c]);
            }
        }
        __syncthreads();
    }
    tc_store_rows<D>(dqf, &sc[warp][0][0], dq, i0 + warp * 16, T_, H, h, b, nullptr);
}

// ---------------------------------------------------------------------------------------------
// Soft-capped cross-entropy of one block of head outputs (the head's matmuls run in cuBLAS; the
// Rust side walks the rows in blocks so the [N, V] logits never exist at once):
//   z = cap·tanh(l/cap) (z = l when cap ≤ 0),  loss = log Σ_v e^{z_v} − z_target
//   dl_v = dloss·(softmax(z)_v − [v = target])·(1 − (z_v/cap)²)
// One block per row.
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float capped(float l, float cap) { return cap > 0.f ? cap * tanhf(l / cap) : l; }

template <typename T>
__device__ void row_lse(const T *row, int V, float cap, float *sh, float *mx, float *lse) {
    float m = -INFINITY;
    for (int c = threadIdx.x; c < V; c += blockDim.x) m = fmaxf(m, capped(ld(row, c), cap));
    m = block_max(m, sh);
    float s = 0.f;
    for (int c = threadIdx.x; c < V; c += blockDim.x) s += __expf(capped(ld(row, c), cap) - m);
    s = block_sum(s, sh);
    *mx = m;
    *lse = m + logf(s);
}

template <typename T>
__device__ void softcap_ce_fwd(const T *logits, const uint32_t *targets, float *loss, int V, float cap) {
    __shared__ float sh[REDUCE_THREADS];
    const T *row = logits + (size_t)blockIdx.x * V;
    float m, lse;
    row_lse(row, V, cap, sh, &m, &lse);
    if (threadIdx.x == 0) loss[blockIdx.x] = lse - capped(ld(row, targets[blockIdx.x]), cap);
}

template <typename T>
__device__ void softcap_ce_bwd(const T *logits, const uint32_t *targets, const float *dloss, T *dlogits, int V,
                               float cap) {
    __shared__ float sh[REDUCE_THREADS];
    size_t r = blockIdx.x;
    const T *row = logits + r * V;
    float m, lse;
    row_lse(row, V, cap, sh, &m, &lse);
    uint32_t tgt = targets[r];
    float g = dloss[r];
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        float z = capped(ld(row, c), cap);
        float dz = g * (__expf(z - lse) - (c == (int)tgt ? 1.f : 0.f));
        float dl = cap > 0.f ? dz * (1.f - (z / cap) * (z / cap)) : dz;
        st(dlogits, r * V + c, dl);
    }
}

// ---------------------------------------------------------------------------------------------
// AdamW over many fp32 tensors in one launch (decoupled weight decay; bias corrections bc1, bc2
// and the gradient scale come from the host):
//   ĝ = g·scale,  m ← β₁m + (1−β₁)ĝ,  v ← β₂v + (1−β₂)ĝ²,
//   p ← p·(1 − lr·wd_t) − lr·(m/bc1) / (√(v/bc2) + ε)
// `ptrs` holds 4 device addresses per tensor (p, g, m, v); `offsets` the prefix sums of their
// sizes (n_tensors + 1 entries); `wd` each tensor's decay. Grid-stride over all elements; the
// tensor of an element is found by binary search. Element-wise, so deterministic.
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void adamw_multi(const uint64_t *ptrs, const int64_t *offsets, const float *wd, int n_tensors,
                                       float lr, float beta1, float beta2, float eps, float bc1, float bc2,
                                       float scale) {
    int64_t total = offsets[n_tensors];
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        int lo = 0, hi = n_tensors - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (offsets[mid] <= e) lo = mid;
            else hi = mid - 1;
        }
        int64_t i = e - offsets[lo];
        float *p = (float *)ptrs[4 * lo];
        const float *g = (const float *)ptrs[4 * lo + 1];
        float *m = (float *)ptrs[4 * lo + 2];
        float *v = (float *)ptrs[4 * lo + 3];
        float gi = g[i] * scale;
        float mi = beta1 * m[i] + (1.f - beta1) * gi;
        float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * (1.f - lr * wd[lo]) - lr * (mi / bc1) / (sqrtf(vi / bc2) + eps);
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points, one per dtype (and head size for attention): `NAME_f32`, `NAME_bf16`,
// `attn_*_bf16_d64`, ...
// ---------------------------------------------------------------------------------------------

#define PER_DTYPE(T, S)                                                                                          \
    extern "C" __global__ void rms_norm_fwd_##S(const T *x, const T *w, T *y, int C, float eps) {                \
        rms_norm_fwd(x, w, y, C, eps);                                                                           \
    }                                                                                                            \
    extern "C" __global__ void rms_norm_bwd_dx_##S(const T *x, const T *w, const T *dy, T *dx, float *rstd,      \
                                                   int C, float eps) {                                           \
        rms_norm_bwd_dx(x, w, dy, dx, rstd, C, eps);                                                             \
    }                                                                                                            \
    extern "C" __global__ void rms_norm_bwd_dw_partial_##S(const T *x, const T *dy, const float *rstd,           \
                                                           float *partial, int N, int C, int rows_per_chunk) {   \
        rms_norm_bwd_dw_partial(x, dy, rstd, partial, N, C, rows_per_chunk);                                     \
    }                                                                                                            \
    extern "C" __global__ void rms_norm_bwd_dw_sum_##S(const float *partial, T *dw, int C, int chunks) {         \
        rms_norm_bwd_dw_sum(partial, dw, C, chunks);                                                             \
    }                                                                                                            \
    extern "C" __global__ void rope_##S(const T *x, T *y, const float *cos, const float *sin, int T_, int H,     \
                                        int D, int offset, float sign, uint64_t pairs) {                         \
        rope(x, y, cos, sin, T_, H, D, offset, sign, (size_t)pairs);                                             \
    }                                                                                                            \
    extern "C" __global__ void attn_bwd_delta_##S(const T *o, const T *dout, float *delta, int B, int T_, int H, \
                                                  int D) {                                                       \
        attn_bwd_delta(o, dout, delta, B, T_, H, D);                                                             \
    }                                                                                                            \
    extern "C" __global__ void softcap_ce_fwd_##S(const T *logits, const uint32_t *targets, float *loss, int V,  \
                                                  float cap) {                                                   \
        softcap_ce_fwd(logits, targets, loss, V, cap);                                                           \
    }                                                                                                            \
    extern "C" __global__ void softcap_ce_bwd_##S(const T *logits, const uint32_t *targets, const float *dloss,  \
                                                  T *dlogits, int V, float cap) {                                \
        softcap_ce_bwd(logits, targets, dloss, dlogits, V, cap);                                                 \
    }

#define PER_HEAD(T, S, D)                                                                                        \
    extern "C" __global__ void attn_fwd_##S##_d##D(const T *q, const T *k, const T *v, T *o, float *lse, int T_, \
                                                   int H, int Hkv, float scale) {                                \
        attn_fwd<T, D>(q, k, v, o, lse, T_, H, Hkv, scale);                                                      \
    }                                                                                                            \
    extern "C" __global__ void attn_bwd_dkdv_##S##_d##D(const T *q, const T *k, const T *v, const T *dout,       \
                                                        const float *lse, const float *delta, T *dk, T *dv,      \
                                                        int T_, int H, int Hkv, float scale) {                   \
        attn_bwd_dkdv<T, D>(q, k, v, dout, lse, delta, dk, dv, T_, H, Hkv, scale);                               \
    }                                                                                                            \
    extern "C" __global__ void attn_bwd_dq_##S##_d##D(const T *q, const T *k, const T *v, const T *dout,         \
                                                      const float *lse, const float *delta, T *dq, int T_, int H, \
                                                      int Hkv, float scale) {                                    \
        attn_bwd_dq<T, D>(q, k, v, dout, lse, delta, dq, T_, H, Hkv, scale);                                     \
    }

PER_DTYPE(float, f32)
PER_DTYPE(bf16, bf16)
PER_HEAD(float, f32, 32)
PER_HEAD(float, f32, 64)
PER_HEAD(float, f32, 128)
PER_HEAD(bf16, bf16, 32)
PER_HEAD(bf16, bf16, 64)
PER_HEAD(bf16, bf16, 128)

#define PER_HEAD_TC(D)                                                                                           \
    extern "C" __global__ void attn_fwd_tc_bf16_d##D(const bf16 *q, const bf16 *k, const bf16 *v, bf16 *o,       \
                                                     float *lse, int T_, int H, int Hkv, float scale) {          \
        attn_fwd_tc<D>(q, k, v, o, lse, T_, H, Hkv, scale);                                                      \
    }                                                                                                            \
    extern "C" __global__ void attn_bwd_dkdv_tc_bf16_d##D(const bf16 *q, const bf16 *k, const bf16 *v,          \
                                                          const bf16 *dout, const float *lse,                    \
                                                          const float *delta, bf16 *dk, bf16 *dv, int T_, int H, \
                                                          int Hkv, float scale) {                                \
        attn_bwd_dkdv_tc<D>(q, k, v, dout, lse, delta, dk, dv, T_, H, Hkv, scale);                               \
    }                                                                                                            \
    extern "C" __global__ void attn_bwd_dq_tc_bf16_d##D(const bf16 *q, const bf16 *k, const bf16 *v,            \
                                                        const bf16 *dout, const float *lse, const float *delta,  \
                                                        bf16 *dq, int T_, int H, int Hkv, float scale) {         \
        attn_bwd_dq_tc<D>(q, k, v, dout, lse, delta, dq, T_, H, Hkv, scale);                                     \
    }

PER_HEAD_TC(64)
PER_HEAD_TC(128)
