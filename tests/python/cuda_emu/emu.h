// A shim that lets g++ compile jarip's CUDA kernels (crates/jarip-kernels/cuda/train.cu) as
// C++20 and run them on CPU threads, one std::thread per CUDA thread, for
// tests/python/test_cuda_emu.py.
//
// Model: `launch` runs the grid's blocks one after another; for each block it starts
// blockDim.x·y·z threads, gives each its thread_local threadIdx/blockIdx, and joins them.
// `__shared__` is `static`: a kernel's shared arrays are function-local statics, so exactly the
// threads of the running block share them (blocks never overlap in time). `__syncthreads()` is a
// barrier across the block's threads; a thread that returns drops out of it (as an exited thread
// does on the GPU), and a barrier that is not reached by every live thread within
// EMU_BARRIER_TIMEOUT_S seconds aborts the process with a message instead of hanging.
// Warps: the block's threads, linearised as x + y·Dx + z·Dx·Dy, form warps of 32 consecutive
// threads, each with its own barrier (`__syncwarp()`, and the entry of mma.h's warp-collective
// WMMA calls); like `__syncthreads`, it aborts on a timeout instead of hanging, e.g. when only
// some lanes of a warp reach a collective call.
// Not emulated: warp shuffles, atomics (train.cu uses neither) and uninitialised shared memory
// (statics start at zero and keep the previous block's values).
#pragma once

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <source_location>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
// As CUDA defines it for GCC hosts (`alignas` may not stand between `static` and the type).
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

// ---- bf16: 16-bit storage, fp32 arithmetic, round-to-nearest-even casts (as CUDA's) ----------

struct __nv_bfloat16 {
    uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) h.bits = 0x7fff;  // NaN -> canonical NaN, as CUDA does
    else h.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return h;
}

// ---- device math -------------------------------------------------------------------------------

inline float __expf(float x) { return expf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

// ---- __syncthreads: a reusable barrier for the running block's threads -------------------------

#ifndef EMU_BARRIER_TIMEOUT_S
#define EMU_BARRIER_TIMEOUT_S 60
#endif

class EmuBarrier {
  public:
    explicit EmuBarrier(unsigned n) : expected_(n) {}

    // `what` names the barrier in the deadlock message. With a call site `at` (the warp barriers),
    // all threads of one round must arrive from the same call, or the process aborts naming both.
    // Returns how many threads took part (the threads that had not returned when it completed).
    unsigned arrive_and_wait(const char *what = "__syncthreads", const std::source_location *at = nullptr) {
        std::unique_lock<std::mutex> lk(mu_);
        unsigned gen = gen_;
        if (at) {
            if (arrived_ == 0) {
                round_what_ = what;
                round_at_ = *at;
            } else if (strcmp(what, round_what_) != 0 || at->line() != round_at_.line() ||
                       at->column() != round_at_.column() || strcmp(at->file_name(), round_at_.file_name()) != 0) {
                fprintf(stderr,
                        "cuda_emu: the threads of one warp-wide barrier in block (%u,%u,%u) arrive from different "
                        "calls (divergent warp): %s at %s:%u and %s at %s:%u\n",
                        blockIdx.x, blockIdx.y, blockIdx.z, round_what_, round_at_.file_name(), (unsigned)round_at_.line(),
                        what, at->file_name(), (unsigned)at->line());
                abort();
            }
        }
        if (++arrived_ == expected_) {
            complete();
            unsigned n = took_part_;
            lk.unlock();
            cv_.notify_all();  // after unlocking, so the woken threads do not queue on the mutex
            return n;
        }
        bool ok = cv_.wait_for(lk, std::chrono::seconds(EMU_BARRIER_TIMEOUT_S), [&] { return gen_ != gen; });
        if (!ok) {
            fprintf(stderr,
                    "cuda_emu: %s deadlock in block (%u,%u,%u): %u of %u live threads arrived\n", what,
                    blockIdx.x, blockIdx.y, blockIdx.z, arrived_, expected_);
            abort();
        }
        return took_part_;  // stable: the next round cannot complete before this thread arrives again
    }

    // A thread that has returned from the kernel no longer takes part.
    void drop() {
        std::unique_lock<std::mutex> lk(mu_);
        expected_--;
        if (arrived_ > 0 && arrived_ == expected_) {
            complete();
            lk.unlock();
            cv_.notify_all();
        }
    }

  private:
    void complete() {
        took_part_ = arrived_;
        arrived_ = 0;
        gen_++;
    }
    std::mutex mu_;
    std::condition_variable cv_;
    unsigned expected_, arrived_ = 0, gen_ = 0, took_part_ = 0;
    const char *round_what_ = "";
    std::source_location round_at_;
};

inline EmuBarrier *emu_barrier = nullptr;

// Writes a thread has issued that other threads may see only after a barrier (mma.h's
// store_matrix_sync): the thread performs them, in order, when it next reaches __syncthreads or
// __syncwarp, or returns, so a kernel that reads them without that barrier reads stale data.
inline thread_local std::vector<std::function<void()>> emu_deferred_writes;
inline void emu_flush_deferred_writes() {
    for (auto &w : emu_deferred_writes) w();
    emu_deferred_writes.clear();
}

inline void __syncthreads() {
    emu_flush_deferred_writes();
    emu_barrier->arrive_and_wait();
}

// ---- warps ------------------------------------------------------------------------------------

inline thread_local EmuBarrier *emu_warp_barrier = nullptr;
inline thread_local unsigned emu_warp_size = 0;  // 32, or fewer in a partial last warp

inline unsigned emu_linear_tid() { return threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y; }
inline unsigned emu_lane() { return emu_linear_tid() % 32; }

inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location at = std::source_location::current()) {
    if (mask != 0xffffffffu) {
        fprintf(stderr, "cuda_emu: __syncwarp with a partial mask (0x%x) is not emulated\n", mask);
        abort();
    }
    emu_flush_deferred_writes();
    emu_warp_barrier->arrive_and_wait("__syncwarp", &at);
}

// Runs `body` (a call of one kernel) as a CUDA launch of `grid` blocks of `block` threads.
template <class F>
void launch(dim3 grid, dim3 block, F body) {
    gridDim = grid;
    blockDim = block;
    unsigned nthreads = block.x * block.y * block.z;
    unsigned nwarps = (nthreads + 31) / 32;
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                EmuBarrier barrier(nthreads);
                std::deque<EmuBarrier> warps;  // EmuBarrier cannot move; a deque never moves it
                for (unsigned w = 0; w < nwarps; w++) warps.emplace_back(min(32u, nthreads - 32 * w));
                emu_barrier = &barrier;
                dim3 b(bx, by, bz);
                unsigned tid = 0;
                for (unsigned tz = 0; tz < block.z; tz++)
                    for (unsigned ty = 0; ty < block.y; ty++)
                        for (unsigned tx = 0; tx < block.x; tx++, tid++) {
                            EmuBarrier *warp = &warps[tid / 32];
                            unsigned wsize = min(32u, nthreads - tid / 32 * 32);
                            threads.emplace_back([&body, &barrier, warp, wsize, b, tx, ty, tz] {
                                blockIdx = b;
                                threadIdx = dim3(tx, ty, tz);
                                emu_warp_barrier = warp;
                                emu_warp_size = wsize;
                                body();
                                emu_flush_deferred_writes();
                                warp->drop();
                                barrier.drop();
                            });
                        }
                for (auto &t : threads) t.join();
                threads.clear();
                emu_barrier = nullptr;
            }
}
