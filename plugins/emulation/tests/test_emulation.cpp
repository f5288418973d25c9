// Tests of the CUDA emulation itself: indices, shared memory, barriers, shuffles, atomics, wmma, the
// emulated compute capability, and the misuse it reports. No framework: exits non-zero on the first
// failed check.
#include "check.h"
#include "cuda_emulation.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace
{

using polynl::testing::failures;

template <typename Kernel, typename... Args>
cudaError_t run(dim3 grid, dim3 block, Kernel kernel, Args... args)
{
    cuda_emulation::launch(grid, block, nullptr, [=] { kernel(args...); });
    return cudaGetLastError();
}

// Every (block, thread) runs once with its own indices.
__global__ void recordIndices(int* visits)
{
    unsigned const thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned const block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    visits[block * blockDim.x * blockDim.y * blockDim.z + thread] += 1;
}

void testIndices()
{
    dim3 const grid(3, 2, 2);
    dim3 const block(4, 3, 2);
    std::vector<int> visits(12 * 24, 0);
    CHECK(run(grid, block, recordIndices, visits.data()) == cudaSuccess);
    for (int v : visits)
    {
        CHECK(v == 1);
    }
}

// Reverses each block's slice through shared memory: wrong without a working barrier.
__global__ void reverseInBlocks(float const* in, float* out)
{
    __shared__ float slice[128];
    unsigned const t = threadIdx.x;
    unsigned const offset = blockIdx.x * blockDim.x;
    slice[t] = in[offset + t];
    __syncthreads();
    out[offset + t] = slice[blockDim.x - 1 - t];
}

void testSharedMemoryAndBarrier()
{
    std::vector<float> in(4 * 128);
    std::vector<float> out(in.size(), -1.F);
    for (size_t i = 0; i < in.size(); ++i)
    {
        in[i] = static_cast<float>(i);
    }
    CHECK(run(4, 128, reverseInBlocks, in.data(), out.data()) == cudaSuccess);
    for (size_t i = 0; i < in.size(); ++i)
    {
        CHECK(out[i] == in[i / 128 * 128 + 127 - i % 128]);
    }
}

// Warp sums with __shfl_down_sync; lane 0 holds each warp's sum, and all lanes add into one total.
__global__ void warpSums(float* sums, float* total)
{
    float value = static_cast<float>(threadIdx.x);
    for (int offset = 16; offset > 0; offset /= 2)
    {
        value += __shfl_down_sync(0xffffffffU, value, offset);
    }
    if (threadIdx.x % 32 == 0)
    {
        sums[threadIdx.x / 32] = value;
    }
    atomicAdd(total, 1.F);
}

void testShuffleAndAtomics()
{
    std::vector<float> sums(8, 0.F);
    float total = 0.F;
    CHECK(run(3, 256, warpSums, sums.data(), &total) == cudaSuccess);
    for (int w = 0; w < 8; ++w)
    {
        CHECK(sums[w] == static_cast<float>(32 * 32 * w + 31 * 32 / 2));
    }
    CHECK(total == 3 * 256.F);
}

// A whole block may return before a barrier; part of a block may not.
__global__ void returnBeforeBarrier(bool wholeBlock, float* out)
{
    if (wholeBlock ? blockIdx.x % 2 == 1 : threadIdx.x == 5)
    {
        return;
    }
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1.F;
}

// Two groups of threads at different barriers.
__global__ void divergentBarriers(float* out)
{
    if (threadIdx.x < 32)
    {
        __syncthreads();
    }
    else
    {
        __syncthreads();
    }
    out[threadIdx.x] = 1.F;
}

void testBarrierMisuse()
{
    std::vector<float> out(4 * 64, 0.F);
    CHECK(run(4, 64, returnBeforeBarrier, true, out.data()) == cudaSuccess);
    CHECK(out[0] == 1.F && out[64] == 0.F && out[128] == 1.F);
    CHECK(run(4, 64, returnBeforeBarrier, false, out.data()) == cudaErrorLaunchFailure);
    CHECK(run(1, 64, divergentBarriers, out.data()) == cudaErrorLaunchFailure);
    CHECK(cudaGetLastError() == cudaSuccess); // reading the error clears it
}

void testConfiguration()
{
    std::vector<float> out(64, 0.F);
    CHECK(run(1, 1025, divergentBarriers, out.data()) == cudaErrorInvalidConfiguration);
    CHECK(run(0, 32, divergentBarriers, out.data()) == cudaErrorInvalidConfiguration);
    CHECK(run(dim3(1, 65536), 32, divergentBarriers, out.data()) == cudaErrorInvalidConfiguration);
    CHECK(out[0] == 0.F);
}

namespace wmma = nvcuda::wmma;

constexpr unsigned kLd16 = 24; // leading dimension of 16-bit tiles: a multiple of 8, rows of 48 bytes
constexpr unsigned kLdFloat = 20;

template <typename T>
float toFloat(T v)
{
    if constexpr (std::is_same_v<T, __half>)
    {
        return __half2float(v);
    }
    else
    {
        return __bfloat162float(v);
    }
}

// d = a b + 1 for each warp's own 16 x 16 tiles (warp w at offset w * 16 rows).
template <typename T, typename LayoutA, wmma::layout_t kStore>
__global__ void tileProducts(T const* a, T const* b, float* d)
{
    unsigned const warp = threadIdx.x / 32;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 1.F);
    wmma::load_matrix_sync(fa, a + warp * 16 * kLd16, kLd16);
    wmma::load_matrix_sync(fb, b + warp * 16 * kLd16, kLd16);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d + warp * 16 * kLdFloat, acc, kLdFloat, kStore);
}

// Two warps of D = A B + 1 with small integers (every sum exact), for the given A layout and store layout.
template <typename T, typename LayoutA, wmma::layout_t kStore>
void testTileProducts(T (*fromFloat)(float))
{
    constexpr bool kRowMajorA = std::is_same_v<LayoutA, wmma::row_major>;
    alignas(32) static T a[2 * 16 * kLd16];
    alignas(32) static T b[2 * 16 * kLd16];
    alignas(32) static float d[2 * 16 * kLdFloat];
    for (unsigned i = 0; i < 2 * 16 * kLd16; ++i)
    {
        a[i] = fromFloat(static_cast<float>(i % 7) - 3.F);
        b[i] = fromFloat(static_cast<float>(i * 3 % 5) - 2.F);
    }
    CHECK((run(1, 64, tileProducts<T, LayoutA, kStore>, a, b, d) == cudaSuccess));
    for (unsigned w = 0; w < 2; ++w)
    {
        for (unsigned i = 0; i < 16; ++i)
        {
            for (unsigned j = 0; j < 16; ++j)
            {
                float expected = 1.F;
                for (unsigned k = 0; k < 16; ++k)
                {
                    unsigned const aAt = kRowMajorA ? i * kLd16 + k : k * kLd16 + i;
                    expected += toFloat(a[w * 16 * kLd16 + aAt]) * toFloat(b[w * 16 * kLd16 + k * kLd16 + j]);
                }
                unsigned const dAt = kStore == wmma::mem_row_major ? i * kLdFloat + j : j * kLdFloat + i;
                CHECK(d[w * 16 * kLdFloat + dAt] == expected);
            }
        }
    }
}

void testWmma()
{
    testTileProducts<__half, wmma::col_major, wmma::mem_row_major>(__float2half_rn);
    testTileProducts<__nv_bfloat16, wmma::row_major, wmma::mem_col_major>(__float2bfloat16_rn);
}

enum class Misuse
{
    kNone,
    kHalfWarpReturns,
    kLanesDisagree
};

// One load (and, for a float buffer, one store) with the given offset, ldm and misuse.
__global__ void misusedLoad(__half const* a, unsigned offset, unsigned ldm, Misuse misuse)
{
    if (misuse == Misuse::kHalfWarpReturns && threadIdx.x >= 16)
    {
        return;
    }
    unsigned const laneOffset = misuse == Misuse::kLanesDisagree ? threadIdx.x % 2 * 16 : 0;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a + offset + laneOffset, ldm);
}

__global__ void misusedStore(float* d, unsigned offset, unsigned ldm)
{
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.F);
    wmma::store_matrix_sync(d + offset, acc, ldm, wmma::mem_row_major);
}

void testWmmaMisuse()
{
    alignas(32) static __half a[64 * kLd16];
    alignas(32) static float d[64 * kLdFloat];
    CHECK(run(1, 32, misusedLoad, a, 0U, kLd16, Misuse::kNone) == cudaSuccess);
    CHECK(run(1, 32, misusedLoad, a, 1U, kLd16, Misuse::kNone) == cudaErrorLaunchFailure);  // 2-byte aligned
    CHECK(run(1, 32, misusedLoad, a, 8U, kLd16, Misuse::kNone) == cudaErrorLaunchFailure);  // 16-byte aligned
    CHECK(run(1, 32, misusedLoad, a, 0U, 20U, Misuse::kNone) == cudaErrorLaunchFailure);    // ldm % 8 != 0
    CHECK(run(1, 16, misusedLoad, a, 0U, kLd16, Misuse::kNone) == cudaErrorLaunchFailure);  // a 16-thread warp
    CHECK(run(1, 32, misusedLoad, a, 0U, kLd16, Misuse::kHalfWarpReturns) == cudaErrorLaunchFailure);
    CHECK(run(1, 32, misusedLoad, a, 0U, kLd16, Misuse::kLanesDisagree) == cudaErrorLaunchFailure);
    CHECK(run(1, 32, misusedStore, d, 0U, kLdFloat) == cudaSuccess);
    CHECK(run(1, 32, misusedStore, d, 4U, kLdFloat) == cudaErrorLaunchFailure); // 16-byte aligned
    CHECK(run(1, 32, misusedStore, d, 0U, 18U) == cudaErrorLaunchFailure);      // ldm % 4 != 0
}

void testComputeCapability()
{
    auto capability = [] {
        int major = 0;
        int minor = 0;
        cudaError_t const err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
        CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0) == err);
        return err == cudaSuccess ? 10 * major + minor : -1;
    };
    int device = -1;
    CHECK(cudaGetDevice(&device) == cudaSuccess && device == 0);
    unsetenv("CUDA_EMULATION_SM");
    CHECK(capability() == 90);
    setenv("CUDA_EMULATION_SM", "75", 1);
    CHECK(capability() == 75);
    setenv("CUDA_EMULATION_SM", "7.5", 1);
    CHECK(capability() == -1);
    unsetenv("CUDA_EMULATION_SM");
}

} // namespace

int main()
{
    testIndices();
    testSharedMemoryAndBarrier();
    testShuffleAndAtomics();
    testBarrierMisuse();
    testConfiguration();
    testWmma();
    testWmmaMisuse();
    testComputeCapability();
    if (failures != 0)
    {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("all checks passed\n");
    return 0;
}
