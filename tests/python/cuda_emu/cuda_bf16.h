// Stub for CUDA's <cuda_bf16.h> in the CPU emulation: the bf16 type and its casts live in emu.h,
// which the driver includes before train.cu.
#pragma once
#include "emu.h"
