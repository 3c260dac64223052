// Stub for CUDA's <mma.h> in the CPU emulation (see emu.h): the subset of the WMMA API that
// crates/jarip-kernels/cuda/train.cu's tensor-core kernels use, 16×16×16 tiles of bf16 inputs with
// fp32 accumulators.
//
// On a GPU a fragment's elements are spread over the warp's 32 lanes in a layout the hardware
// picks; here every thread holds the whole tile (matrix_a M×K, matrix_b K×N, accumulator M×N,
// stored row by row whatever the fragment's layout), so a kernel that indexes fragments (`.x[i]`,
// `num_elements`) does not compile instead of silently running with the wrong layout.
//
// As CUDA documents for them, load_matrix_sync, mma_sync and store_matrix_sync first wait until
// all lanes of the warp have arrived (a warp barrier, tagged with the kernel's call site): lanes
// that meet there from different calls abort at once naming both (emu.h), a call that not every
// lane reaches deadlocks and aborts, and one made by a warp with lanes that have already returned
// aborts. Then:
//   load_matrix_sync   every lane reads the whole tile for itself;
//   mma_sync           d = a·b + c per thread: for each (m, n) the products a[m][k]·b[k][n] (exact
//                      in fp32 for bf16 inputs) are summed over k = 0..K-1 in that order in fp32,
//                      then c[m][n] is added; d may alias c;
//   store_matrix_sync  lane 0 alone writes the tile, once, and only when it next reaches
//                      __syncthreads or __syncwarp (or returns): lanes see a WMMA store only after
//                      a barrier, as the CUDA memory model promises, and a kernel that reads one
//                      without a barrier reads stale data here, deterministically.
// Like the hardware, loads and stores need a 256-bit aligned pointer and a leading dimension
// `ldm` that is a multiple of 16 bytes (8 bf16, 4 floats); a violation aborts with a message
// naming the call, where a GPU would fault or misread.
#pragma once

#include <type_traits>

#include "emu.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace emu_detail {
template <class Use, int M, int N, int K>
struct shape;
template <int M, int N, int K>
struct shape<matrix_a, M, N, K> {
    static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct shape<matrix_b, M, N, K> {
    static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct shape<accumulator, M, N, K> {
    static constexpr int rows = M, cols = N;
};

inline float to_float(float x) { return x; }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Prints one message (the first failing thread's; the others wait here) and aborts.
[[noreturn]] inline void fail(const char *fn, const char *why, unsigned long long a, unsigned long long b) {
    static std::mutex mu;
    mu.lock();
    unsigned t = emu_linear_tid();
    char msg[512];
    int n = snprintf(msg, sizeof msg, "cuda_emu: wmma::%s in block (%u,%u,%u), thread %u (warp %u, lane %u): ", fn,
                     blockIdx.x, blockIdx.y, blockIdx.z, t, t / 32, t % 32);
    snprintf(msg + n, sizeof msg - n, why, a, b);
    fprintf(stderr, "%s\n", msg);
    abort();
}

// The warp barrier each *_sync call starts with.
// `fn` is the call's name, `what` the same for the barrier's messages, `at` the kernel's call.
inline void warp_arrive(const char *fn, const char *what, const std::source_location &at) {
    unsigned live = emu_warp_barrier->arrive_and_wait(what, &at);
    if (live != emu_warp_size)
        fail(fn, "called by a warp of which only %llu of %llu lanes are still running", live, emu_warp_size);
}

template <class T>
inline void check_ptr(const char *fn, const T *ptr, unsigned ldm) {
    if ((uintptr_t)ptr % 32 != 0)
        fail(fn, "pointer 0x%llx is not 256-bit aligned (address mod 32 = %llu)", (unsigned long long)(uintptr_t)ptr,
             (unsigned long long)((uintptr_t)ptr % 32));
    if (((unsigned long long)ldm * sizeof(T)) % 16 != 0)
        fail(fn, "ldm %llu is not a multiple of %llu elements (16 bytes)", ldm, 16 / sizeof(T));
}
}  // namespace emu_detail

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "cuda_emu: only 16x16x16 WMMA tiles are emulated");
    static_assert(std::is_same_v<Use, accumulator>
                      ? std::is_same_v<T, float> && std::is_same_v<Layout, void>
                      : std::is_same_v<T, __nv_bfloat16> &&
                            (std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>),
                  "cuda_emu: emulated fragments are matrix_a/matrix_b of bf16 (row_major or col_major) and "
                  "float accumulators");
    static constexpr int emu_rows = emu_detail::shape<Use, M, N, K>::rows;
    static constexpr int emu_cols = emu_detail::shape<Use, M, N, K>::cols;
    T emu_tile[emu_rows][emu_cols];  // the whole logical tile, row by row
};

template <class Use, int M, int N, int K, class T, class Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout> &f, const std::type_identity_t<T> &value) {
    for (auto &row : f.emu_tile)
        for (auto &e : row) e = value;
}

// matrix_a / matrix_b: element (r, c) of the tile is ptr[r·ldm + c] (row_major) or ptr[c·ldm + r]
// (col_major).
template <class Use, int M, int N, int K, class T, class Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout> &f, const std::type_identity_t<T> *ptr, unsigned ldm,
                             std::source_location at = std::source_location::current()) {
    static_assert(!std::is_same_v<Use, accumulator>, "cuda_emu: accumulator loads take a layout_t");
    emu_detail::check_ptr("load_matrix_sync", ptr, ldm);
    emu_detail::warp_arrive("load_matrix_sync", "wmma::load_matrix_sync (warp-collective)", at);
    constexpr bool row = std::is_same_v<Layout, row_major>;
    for (int r = 0; r < f.emu_rows; r++)
        for (int c = 0; c < f.emu_cols; c++) f.emu_tile[r][c] = row ? ptr[(size_t)r * ldm + c] : ptr[(size_t)c * ldm + r];
}

template <int M, int N, int K>
inline void load_matrix_sync(fragment<accumulator, M, N, K, float> &f, const float *ptr, unsigned ldm,
                             layout_t layout, std::source_location at = std::source_location::current()) {
    emu_detail::check_ptr("load_matrix_sync", ptr, ldm);
    emu_detail::warp_arrive("load_matrix_sync", "wmma::load_matrix_sync (warp-collective)", at);
    for (int r = 0; r < M; r++)
        for (int c = 0; c < N; c++)
            f.emu_tile[r][c] = layout == mem_row_major ? ptr[(size_t)r * ldm + c] : ptr[(size_t)c * ldm + r];
}

template <int M, int N, int K>
inline void store_matrix_sync(float *ptr, const fragment<accumulator, M, N, K, float> &f, unsigned ldm,
                              layout_t layout, std::source_location at = std::source_location::current()) {
    emu_detail::check_ptr("store_matrix_sync", ptr, ldm);
    emu_detail::warp_arrive("store_matrix_sync", "wmma::store_matrix_sync (warp-collective)", at);
    if (emu_lane() != 0) return;
    emu_deferred_writes.push_back([ptr, ldm, layout, tile = f] {
        for (int r = 0; r < M; r++)
            for (int c = 0; c < N; c++)
                (layout == mem_row_major ? ptr[(size_t)r * ldm + c] : ptr[(size_t)c * ldm + r]) = tile.emu_tile[r][c];
    });
}

template <int M, int N, int K, class Ta, class La, class Tb, class Lb>
inline void mma_sync(fragment<accumulator, M, N, K, float> &d, const fragment<matrix_a, M, N, K, Ta, La> &a,
                     const fragment<matrix_b, M, N, K, Tb, Lb> &b, const fragment<accumulator, M, N, K, float> &c,
                     std::source_location at = std::source_location::current()) {
    emu_detail::warp_arrive("mma_sync", "wmma::mma_sync (warp-collective)", at);
    float af[M][K], bt[N][K], out[M][N];
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) af[m][k] = emu_detail::to_float(a.emu_tile[m][k]);
    for (int k = 0; k < K; k++)
        for (int n = 0; n < N; n++) bt[n][k] = emu_detail::to_float(b.emu_tile[k][n]);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            float s = 0.f;
            for (int k = 0; k < K; k++) s += af[m][k] * bt[n][k];
            out[m][n] = s + c.emu_tile[m][n];
        }
    memcpy(d.emu_tile, out, sizeof out);  // after reading c: d may be c
}

}  // namespace wmma
}  // namespace nvcuda
