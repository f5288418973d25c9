// Stand-in for the CUDA toolkit's cuda_runtime_api.h, for the CPU emulation (../cuda_emulation.h) on
// machines without the toolkit: the vector types and the runtime calls the kernels' host code uses,
// with CUDA's names and error codes. The emulation defines the calls (../cuda_emulation.cpp).
#pragma once

#include <cstddef>

struct uint3
{
    unsigned int x, y, z;
};

struct dim3
{
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx)
        , y(vy)
        , z(vz)
    {
    }
};

typedef struct CUstream_st* cudaStream_t;

enum cudaError_t
{
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorLaunchFailure = 719,
};

enum cudaDeviceAttr
{
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
};

struct cudaFuncAttributes
{
    size_t sharedSizeBytes, constSizeBytes, localSizeBytes;
    int maxThreadsPerBlock, numRegs, ptxVersion, binaryVersion;
};

extern "C"
{
    cudaError_t cudaGetLastError(void);
    cudaError_t cudaGetDevice(int* device);
    cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
    cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, void const* func);
    char const* cudaGetErrorString(cudaError_t error);
}
