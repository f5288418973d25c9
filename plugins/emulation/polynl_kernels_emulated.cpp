// The kernel source compiled as C++ for the CPU emulation: cuda_emulation.h first, then the .cu unchanged.
#include "cuda_emulation.h"

#include "../kernels/polynl_kernels.cu"
