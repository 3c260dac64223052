// ctypes entry points for the CPU emulation of crates/jarip-kernels/cuda/train.cu: one `emu_*`
// function per kernel entry, taking host pointers and launching the kernel with the geometry the
// Rust side uses. bf16 buffers cross as raw uint16 (void *). Built by tests/python/test_cuda_emu.py.
#include "emu.h"
#include <mma.h>  // the shim's (mma.h here), also for the WMMA self-test below
#include "../../../crates/jarip-kernels/cuda/train.cu"

#define EXPORT extern "C" __attribute__((visibility("default")))

static unsigned cdiv(uint64_t a, uint64_t b) { return (unsigned)((a + b - 1) / b); }

// The shim's casts, so the test can check them against numpy's round-to-nearest-even.
EXPORT void emu_f32_to_bf16(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = __float2bfloat16(x[i]).bits;
}
EXPORT void emu_bf16_to_f32(const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = __bfloat162float(__nv_bfloat16{x[i]});
}

#define EMU_PER_DTYPE(T, S)                                                                                \
    EXPORT void emu_rms_norm_fwd_##S(const void *x, const void *w, void *y, int N, int C, float eps) {      \
        launch(dim3(N), dim3(256), [=] { rms_norm_fwd_##S((const T *)x, (const T *)w, (T *)y, C, eps); }); \
    }                                                                                                      \
    EXPORT void emu_rms_norm_bwd_dx_##S(const void *x, const void *w, const void *dy, void *dx, float *rstd, \
                                        int N, int C, float eps) {                                         \
        launch(dim3(N), dim3(256), [=] {                                                                   \
            rms_norm_bwd_dx_##S((const T *)x, (const T *)w, (const T *)dy, (T *)dx, rstd, C, eps);         \
        });                                                                                                \
    }                                                                                                      \
    EXPORT void emu_rms_norm_bwd_dw_partial_##S(const void *x, const void *dy, const float *rstd,           \
                                                float *partial, int N, int C, int chunks) {                \
        int rows_per_chunk = (int)cdiv(N, chunks);                                                         \
        launch(dim3(cdiv(C, 256), chunks), dim3(256), [=] {                                                \
            rms_norm_bwd_dw_partial_##S((const T *)x, (const T *)dy, rstd, partial, N, C, rows_per_chunk); \
        });                                                                                                \
    }                                                                                                      \
    EXPORT void emu_rms_norm_bwd_dw_sum_##S(const float *partial, void *dw, int C, int chunks) {           \
        launch(dim3(cdiv(C, 256)), dim3(256), [=] { rms_norm_bwd_dw_sum_##S(partial, (T *)dw, C, chunks); }); \
    }                                                                                                      \
    EXPORT void emu_rope_##S(const void *x, void *y, const float *cos, const float *sin, int B, int T_, int H, \
                             int D, int offset, float sign) {                                              \
        uint64_t pairs = (uint64_t)B * T_ * H * (D / 2);                                                   \
        launch(dim3(cdiv(pairs, 256)), dim3(256), [=] {                                                    \
            rope_##S((const T *)x, (T *)y, cos, sin, T_, H, D, offset, sign, pairs);                       \
        });                                                                                                \
    }                                                                                                      \
    EXPORT void emu_attn_bwd_delta_##S(const void *o, const void *dout, float *delta, int B, int T_, int H, \
                                       int D) {                                                            \
        launch(dim3(cdiv((uint64_t)B * H * T_, 256)), dim3(256), [=] {                                     \
            attn_bwd_delta_##S((const T *)o, (const T *)dout, delta, B, T_, H, D);                         \
        });                                                                                                \
    }                                                                                                      \
    EXPORT void emu_softcap_ce_fwd_##S(const void *logits, const uint32_t *targets, float *loss, int R, int V, \
                                       float cap) {                                                        \
        launch(dim3(R), dim3(256), [=] { softcap_ce_fwd_##S((const T *)logits, targets, loss, V, cap); }); \
    }                                                                                                      \
    EXPORT void emu_softcap_ce_bwd_##S(const void *logits, const uint32_t *targets, const float *dloss,    \
                                       void *dlogits, int R, int V, float cap) {                           \
        launch(dim3(R), dim3(256), [=] {                                                                   \
            softcap_ce_bwd_##S((const T *)logits, targets, dloss, (T *)dlogits, V, cap);                   \
        });                                                                                                \
    }

EMU_PER_DTYPE(float, f32)
EMU_PER_DTYPE(bf16, bf16)

// Attention entries take D at run time and pick the kernel instantiated for it (32, 64 or 128);
// they return 0, or -1 for a head size train.cu has no kernel for.
#define EMU_ATTN_D(T, S, D)                                                                                \
    case D:                                                                                                \
        launch(dim3(cdiv(T_, FWD_Q), B * H), dim3(FWD_Q), [=] {                                            \
            attn_fwd_##S##_d##D((const T *)q, (const T *)k, (const T *)v, (T *)o, lse, T_, H, Hkv, scale); \
        });                                                                                                \
        return 0;
#define EMU_DKDV_D(T, S, D)                                                                                \
    case D:                                                                                                \
        launch(dim3(cdiv(T_, KT), B * Hkv), dim3(KT), [=] {                                                \
            attn_bwd_dkdv_##S##_d##D((const T *)q, (const T *)k, (const T *)v, (const T *)dout, lse, delta, \
                                     (T *)dk, (T *)dv, T_, H, Hkv, scale);                                 \
        });                                                                                                \
        return 0;
#define EMU_DQ_D(T, S, D)                                                                                  \
    case D:                                                                                                \
        launch(dim3(cdiv(T_, KT), B * H), dim3(KT), [=] {                                                  \
            attn_bwd_dq_##S##_d##D((const T *)q, (const T *)k, (const T *)v, (const T *)dout, lse, delta,  \
                                   (T *)dq, T_, H, Hkv, scale);                                            \
        });                                                                                                \
        return 0;

#define EMU_PER_HEAD(T, S)                                                                                 \
    EXPORT int emu_attn_fwd_##S(const void *q, const void *k, const void *v, void *o, float *lse, int B,   \
                                int T_, int H, int Hkv, int D, float scale) {                              \
        switch (D) { EMU_ATTN_D(T, S, 32) EMU_ATTN_D(T, S, 64) EMU_ATTN_D(T, S, 128) }                     \
        return -1;                                                                                         \
    }                                                                                                      \
    EXPORT int emu_attn_bwd_dkdv_##S(const void *q, const void *k, const void *v, const void *dout,        \
                                     const float *lse, const float *delta, void *dk, void *dv, int B, int T_, \
                                     int H, int Hkv, int D, float scale) {                                 \
        switch (D) { EMU_DKDV_D(T, S, 32) EMU_DKDV_D(T, S, 64) EMU_DKDV_D(T, S, 128) }                     \
        return -1;                                                                                         \
    }                                                                                                      \
    EXPORT int emu_attn_bwd_dq_##S(const void *q, const void *k, const void *v, const void *dout,          \
                                   const float *lse, const float *delta, void *dq, int B, int T_, int H,   \
                                   int Hkv, int D, float scale) {                                          \
        switch (D) { EMU_DQ_D(T, S, 32) EMU_DQ_D(T, S, 64) EMU_DQ_D(T, S, 128) }                           \
        return -1;                                                                                         \
    }

EMU_PER_HEAD(float, f32)
EMU_PER_HEAD(bf16, bf16)

// Tensor-core attention (bf16 only, D = 64 or 128): blocks of two warps over tiles of TC = 32 query
// rows (forward, dQ) or key rows (dK/dV). Same arguments and return values as the entries above.
#define EMU_TC_BLOCK 64
#define EMU_ATTN_TC_D(D)                                                                                   \
    case D:                                                                                                \
        launch(dim3(cdiv(T_, TC), B * H), dim3(EMU_TC_BLOCK), [=] {                                        \
            attn_fwd_tc_bf16_d##D((const bf16 *)q, (const bf16 *)k, (const bf16 *)v, (bf16 *)o, lse, T_, H, Hkv, \
                                  scale);                                                                  \
        });                                                                                                \
        return 0;
#define EMU_DKDV_TC_D(D)                                                                                   \
    case D:                                                                                                \
        launch(dim3(cdiv(T_, TC), B * Hkv), dim3(EMU_TC_BLOCK), [=] {                                      \
            attn_bwd_dkdv_tc_bf16_d##D((const bf16 *)q, (const bf16 *)k, (const bf16 *)v, (const bf16 *)dout, \
                                       lse, delta, (bf16 *)dk, (bf16 *)dv, T_, H, Hkv, scale);             \
        });                                                                                                \
        return 0;
#define EMU_DQ_TC_D(D)                                                                                     \
    case D:                                                                                                \
        launch(dim3(cdiv(T_, TC), B * H), dim3(EMU_TC_BLOCK), [=] {                                        \
            attn_bwd_dq_tc_bf16_d##D((const bf16 *)q, (const bf16 *)k, (const bf16 *)v, (const bf16 *)dout, lse, \
                                     delta, (bf16 *)dq, T_, H, Hkv, scale);                                \
        });                                                                                                \
        return 0;

EXPORT int emu_attn_fwd_tc_bf16(const void *q, const void *k, const void *v, void *o, float *lse, int B, int T_,
                                int H, int Hkv, int D, float scale) {
    switch (D) { EMU_ATTN_TC_D(64) EMU_ATTN_TC_D(128) }
    return -1;
}
EXPORT int emu_attn_bwd_dkdv_tc_bf16(const void *q, const void *k, const void *v, const void *dout, const float *lse,
                                     const float *delta, void *dk, void *dv, int B, int T_, int H, int Hkv, int D,
                                     float scale) {
    switch (D) { EMU_DKDV_TC_D(64) EMU_DKDV_TC_D(128) }
    return -1;
}
EXPORT int emu_attn_bwd_dq_tc_bf16(const void *q, const void *k, const void *v, const void *dout, const float *lse,
                                   const float *delta, void *dq, int B, int T_, int H, int Hkv, int D, float scale) {
    switch (D) { EMU_DQ_TC_D(64) EMU_DQ_TC_D(128) }
    return -1;
}

EXPORT void emu_adamw_multi(const uint64_t *ptrs, const int64_t *offsets, const float *wd, int n_tensors, float lr,
                            float beta1, float beta2, float eps, float bc1, float bc2, float scale, int grid) {
    launch(dim3(grid), dim3(256),
           [=] { adamw_multi(ptrs, offsets, wd, n_tensors, lr, beta1, beta2, eps, bc1, bc2, scale); });
}

// ---- the WMMA shim itself (mma.h) ----------------------------------------------------------------

// D = A·B + C (or A·B when !use_c) for A [16×32], B [32×16], C [16×16], in two k steps, by a block
// of two warps: warp 0 reads A, B, C row-major and writes D row-major to d_row; warp 1 reads
// at = Aᵀ, bt = Bᵀ, ct = Cᵀ col-major and writes D col-major to d_col (which then holds Dᵀ).
__global__ void wmma_selftest(const bf16 *a, const bf16 *b, const bf16 *at, const bf16 *bt, const float *c,
                              const float *ct, float *d_row, float *d_col, int use_c) {
    using namespace nvcuda;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    if (threadIdx.x / 32 == 0) {
        if (use_c) wmma::load_matrix_sync(acc, c, 16, wmma::mem_row_major);
        else wmma::fill_fragment(acc, 0.f);
        for (int kk = 0; kk < 2; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> af;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> bf;
            wmma::load_matrix_sync(af, a + kk * 16, 32);
            wmma::load_matrix_sync(bf, b + kk * 16 * 16, 16);
            wmma::mma_sync(acc, af, bf, acc);
        }
        wmma::store_matrix_sync(d_row, acc, 16, wmma::mem_row_major);
    } else {
        if (use_c) wmma::load_matrix_sync(acc, ct, 16, wmma::mem_col_major);
        else wmma::fill_fragment(acc, 0.f);
        for (int kk = 0; kk < 2; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> af;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> bf;
            wmma::load_matrix_sync(af, at + kk * 16 * 16, 16);
            wmma::load_matrix_sync(bf, bt + kk * 16, 32);
            wmma::mma_sync(acc, af, bf, acc);
        }
        wmma::store_matrix_sync(d_col, acc, 16, wmma::mem_col_major);
    }
}

EXPORT void emu_wmma_selftest(const void *a, const void *b, const void *at, const void *bt, const float *c,
                              const float *ct, float *d_row, float *d_col, int use_c) {
    launch(dim3(1), dim3(64), [=] {
        wmma_selftest((const bf16 *)a, (const bf16 *)b, (const bf16 *)at, (const bf16 *)bt, c, ct, d_row, d_col,
                      use_c);
    });
}

// Misuses the shim must abort on (run by the test in a child process): 0 a load from a pointer
// that is not 32-byte aligned, 1 a bf16 load with ldm 12, 2 a float store with ldm 6, 3 a store by
// a warp whose lanes 16..31 have returned, 4 a divergent warp (lanes 16..31 skip a load).
__global__ void wmma_misuse(const bf16 *a, float *d, int what) {
    using namespace nvcuda;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> af;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.f);
    if (what == 0) wmma::load_matrix_sync(af, a + 8, 32);
    if (what == 1) wmma::load_matrix_sync(af, a, 12);
    if (what == 2) wmma::store_matrix_sync(d, acc, 6, wmma::mem_row_major);
    if (what == 3) {
        if (threadIdx.x % 32 >= 16) return;
        wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
    }
    if (what == 4) {
        if (threadIdx.x % 32 < 16) wmma::load_matrix_sync(af, a, 16);
        wmma::store_matrix_sync(d, acc, 16, wmma::mem_row_major);
    }
}

EXPORT void emu_wmma_misuse(const void *a, float *d, int what) {
    launch(dim3(1), dim3(32), [=] { wmma_misuse((const bf16 *)a, d, what); });
}
