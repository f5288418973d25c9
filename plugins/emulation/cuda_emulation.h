// CUDA on the CPU: compiles CUDA kernel source as C++ and runs it with real threads, so that the
// kernels' indexing, barriers, warp shuffles, reductions and conversions can be checked (under
// AddressSanitizer) on a machine without a GPU:
//
//   g++ -std=c++20 -I<cuda>/include -I<this folder> -c polynl_kernels_emulated.cpp
//   (which includes this header, then the .cu; link with cuda_emulation.cpp, compiled with the same -I;
//   -I no_toolkit without a CUDA toolkit)
//
// It covers what plugins/kernels uses: the __global__/__host__/__device__/__shared__/__launch_bounds__
// qualifiers, threadIdx/blockIdx/blockDim/gridDim, __syncthreads, __shfl_down_sync, atomicAdd on
// float, min, the __half/__nv_bfloat16 types and conversions (from the CUDA toolkit's headers in host
// mode, or from no_toolkit/ where there is no toolkit), nvcuda::wmma for 16 x 16 x 16 tiles (below), and
// cudaGetLastError, cudaGetErrorString, cudaGetDevice, cudaDeviceGetAttribute and cudaFuncGetAttributes
// (cuda_emulation.cpp). Device pointers are host pointers; everything is synchronous. Code that launches
// kernels calls cuda_emulation::launch where it would use <<<>>>.
//
// Environment: CUDA_EMULATION_SM (default 90) is the emulated device's compute capability, as
// 10 * major + minor; CUDA_EMULATION_PTX (default: CUDA_EMULATION_SM) the virtual architecture the code
// counts as compiled for (cudaFuncAttributes::ptxVersion, cudaEmulationPtxVersion: kernels leave empty
// what nvcc would compile away for it); CUDA_EMULATION_TRACE=1 prints one line per launch to stderr with its grid, block
// and the number of warp-level mma_sync calls it made.
//
// A launch runs the blocks of the grid one after another, each with blockDim OS threads, so that
// __syncthreads and __shfl_down_sync are real synchronisation points. Because only one block runs at
// a time, __shared__ variables are function-local statics: one instance per function (and template
// instantiation) is the running block's shared memory.
#pragma once

#define CUDA_EMULATION 1

#define __global__
#ifndef __host__
#define __host__
#endif
#define __device__
#define __shared__ static
#define __launch_bounds__(...)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <functional>

//! CUDA_EMULATION_PTX as 10 * major + minor (default: the emulated device's compute capability).
__attribute__((visibility("hidden"))) int cudaEmulationPtxVersion();
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

//! Checks a warp-collective wmma call `name` of the calling thread: every lane of a full 32-thread warp
//! makes the same call with the same `pointer` and `ldm`; a non-null `pointer` is 32-byte aligned and
//! `ldm` (in elements of `elementBytes`) a multiple of 16 bytes. A violation fails the launch.
void warpMatrixCall(char const* name, void const* pointer, unsigned ldm, std::size_t elementBytes, Site const& site);

//! Counts one mma_sync of the calling warp (reported with CUDA_EMULATION_TRACE).
void countMma();

//! The calling thread's lane in its warp.
unsigned laneId();

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

// nvcuda::wmma for the 16 x 16 x 16 shape with __half or __nv_bfloat16 operands and float accumulators.
// Every lane holds whole operand tiles; lane l holds the accumulator elements l, l + 32, ... of the
// row-major tile, so mma_sync computes each lane's share of the product and store_matrix_sync writes
// every element once. Kernels must not depend on this mapping (the real one is opaque).
namespace nvcuda::wmma
{

struct matrix_a
{
};
struct matrix_b
{
};
struct accumulator
{
};
struct row_major
{
};
struct col_major
{
};
enum layout_t
{
    mem_row_major,
    mem_col_major
};

template <typename Use, int m, int n, int k, typename T, typename Layout = void>
class fragment
{
    static_assert(m == 16 && n == 16 && k == 16, "the emulation supports the 16 x 16 x 16 shape only");
    static constexpr bool isAccumulator = std::is_same_v<Use, accumulator>;
    static constexpr bool is16Bit = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
    static_assert(isAccumulator ? std::is_same_v<T, float> : is16Bit,
        "the emulation supports __half and __nv_bfloat16 operands with float accumulators");

public:
    static constexpr int num_elements = isAccumulator ? 16 * 16 / 32 : 16 * 16;
    T x[num_elements];
};

namespace detail
{
constexpr int kEdge = 16;
constexpr unsigned kLanes = 32;

inline float toFloat(__half v)
{
    return __half2float(v);
}
inline float toFloat(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

//! Offset of element (row, col) of a tile with leading dimension ldm.
inline std::size_t offset(int row, int col, unsigned ldm, bool rowMajor)
{
    return rowMajor ? std::size_t(row) * ldm + col : std::size_t(col) * ldm + row;
}
} // namespace detail

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& a, T const* mptr, unsigned ldm,
    std::source_location site = std::source_location::current())
{
    static_assert(!std::is_same_v<Use, accumulator>, "accumulators are loaded with a layout_t (not emulated)");
    cuda_emulation::warpMatrixCall("load_matrix_sync", mptr, ldm, sizeof(T), site);
    for (int r = 0; r < detail::kEdge; ++r)
    {
        for (int c = 0; c < detail::kEdge; ++c)
        {
            a.x[r * detail::kEdge + c] = mptr[detail::offset(r, c, ldm, std::is_same_v<Layout, row_major>)];
        }
    }
}

inline void store_matrix_sync(float* mptr, fragment<accumulator, 16, 16, 16, float> const& a, unsigned ldm,
    layout_t layout, std::source_location site = std::source_location::current())
{
    cuda_emulation::warpMatrixCall("store_matrix_sync", mptr, ldm, sizeof(float), site);
    unsigned const lane = cuda_emulation::laneId();
    for (int i = 0; i < a.num_elements; ++i)
    {
        int const e = static_cast<int>(lane + detail::kLanes * i);
        mptr[detail::offset(e / detail::kEdge, e % detail::kEdge, ldm, layout == mem_row_major)] = a.x[i];
    }
}

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& a, T const& value,
    std::source_location site = std::source_location::current())
{
    cuda_emulation::warpMatrixCall("fill_fragment", nullptr, 0, 0, site);
    for (T& element : a.x)
    {
        element = value;
    }
}

//! d = a b + c; d may be c. Products of 16-bit values are exact in float; sums are float.
template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, fragment<matrix_a, 16, 16, 16, T, LayoutA> const& a,
    fragment<matrix_b, 16, 16, 16, T, LayoutB> const& b, fragment<accumulator, 16, 16, 16, float> const& c,
    std::source_location site = std::source_location::current())
{
    cuda_emulation::warpMatrixCall("mma_sync", nullptr, 0, 0, site);
    cuda_emulation::countMma();
    unsigned const lane = cuda_emulation::laneId();
    for (int i = 0; i < d.num_elements; ++i)
    {
        int const e = static_cast<int>(lane + detail::kLanes * i);
        int const row = e / detail::kEdge;
        int const col = e % detail::kEdge;
        float sum = c.x[i];
        for (int k = 0; k < detail::kEdge; ++k)
        {
            sum += detail::toFloat(a.x[row * detail::kEdge + k]) * detail::toFloat(b.x[k * detail::kEdge + col]);
        }
        d.x[i] = sum;
    }
}

} // namespace nvcuda::wmma
