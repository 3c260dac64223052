// ctypes entry points for the CPU emulation of crates/jarip-kernels/cuda/train.cu: one `emu_*`
// function per kernel entry, taking host pointers and launching the kernel with the geometry the
// Rust side uses. bf16 buffers cross as raw uint16 (void *). Built by tests/python/test_cuda_emu.py.
#include "emu.h"
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

EXPORT void emu_adamw_multi(const uint64_t *ptrs, const int64_t *offsets, const float *wd, int n_tensors, float lr,
                            float beta1, float beta2, float eps, float bc1, float bc2, float scale, int grid) {
    launch(dim3(grid), dim3(256),
           [=] { adamw_multi(ptrs, offsets, wd, n_tensors, lr, beta1, beta2, eps, bc1, bc2, scale); });
}
