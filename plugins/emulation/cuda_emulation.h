// CUDA on the CPU: compiles CUDA kernel source as C++ and runs it with real threads, so that the
// kernels' indexing, barriers, warp shuffles, reductions and conversions can be checked (under
// AddressSanitizer) on a machine without a GPU:
//
//   g++ -std=c++20 -I<cuda>/include -I<this folder> -x c++ -include cuda_emulation.h -c kernels.cu
//   (link with cuda_emulation.cpp, compiled with the same -I; -I no_toolkit without a CUDA toolkit)
//
// It covers what plugins/kernels uses: the __global__/__device__/__shared__/__launch_bounds__
// qualifiers, threadIdx/blockIdx/blockDim/gridDim, __syncthreads, __shfl_down_sync, atomicAdd on
// float, min, the __half/__nv_bfloat16 types and conversions (from the CUDA toolkit's headers in host
// mode, or from no_toolkit/ where there is no toolkit), and cudaMemsetAsync, cudaGetLastError and
// cudaGetErrorString (cuda_emulation.cpp). Device pointers are host pointers; everything is
// synchronous. Code that launches kernels calls cuda_emulation::launch where it would use <<<>>>.
//
// A launch runs the blocks of the grid one after another, each with blockDim OS threads, so that
// __syncthreads and __shfl_down_sync are real synchronisation points. Because only one block runs at
// a time, __shared__ variables are function-local statics: one instance per function (and template
// instantiation) is the running block's shared memory.
#pragma once

#define CUDA_EMULATION 1

#define __global__
#define __device__
#define __shared__ static
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <functional>
#include <source_location>
#include <type_traits>

#ifndef __forceinline__
#define __forceinline__ inline
#endif

inline thread_local uint3 threadIdx{};
inline thread_local uint3 blockIdx{};
inline thread_local dim3 blockDim{};
inline thread_local dim3 gridDim{};

namespace cuda_emulation
{

using Site = std::source_location;

//! Runs `thread` for every thread of every block of the grid and waits for it. A bad configuration
//! or a broken synchronisation rule makes the next cudaGetLastError() return an error; the details
//! go to stderr. Launches from several host threads run one at a time.
void launch(dim3 grid, dim3 block, cudaStream_t stream, std::function<void()> const& thread);

//! __syncthreads of the calling thread, called at `site`.
void syncThreads(Site const& site);

//! __shfl_down_sync of the calling thread: replaces `*value` (`bytes` long) by the value of lane + delta.
void shuffleDown(void* value, std::size_t bytes, unsigned mask, unsigned delta, Site const& site);

} // namespace cuda_emulation

inline void __syncthreads(std::source_location site = std::source_location::current())
{
    cuda_emulation::syncThreads(site);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, std::source_location site = std::source_location::current())
{
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles exchange values of up to 8 bytes");
    cuda_emulation::shuffleDown(&value, sizeof(T), mask, delta, site);
    return value;
}

inline float atomicAdd(float* address, float value)
{
    return std::atomic_ref<float>(*address).fetch_add(value);
}

template <typename T>
T min(T a, T b)
{
    return b < a ? b : a;
}
