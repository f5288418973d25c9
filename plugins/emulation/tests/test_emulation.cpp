// Tests of the CUDA emulation itself: indices, shared memory, barriers, shuffles, atomics, and the
// misuse it reports. No framework: exits non-zero on the first failed check.
#include "check.h"
#include "cuda_emulation.h"

#include <cstdio>
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

} // namespace

int main()
{
    testIndices();
    testSharedMemoryAndBarrier();
    testShuffleAndAtomics();
    testBarrierMisuse();
    testConfiguration();
    if (failures != 0)
    {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::printf("all checks passed\n");
    return 0;
}
