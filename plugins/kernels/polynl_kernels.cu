// CUDA kernels of one PolyNL block (weights already folded) behind the C ABI of polynl_kernels.h.
//
// Folded path:   stage weights -> Gram S = X^T X / N and mu -> m -> M = alpha I + Wq diag(m) Wo
//                and c = Wo^T (bq * m) + bo -> Y = X M + 1 c^T.
// Unfolded path: stage weights -> [K | V] = X [Wk | Wv] + [bk | bv] -> m = mean_n K * V
//                -> G = (X Wq + bq) * m -> Y = G Wo + bo + alpha X.
// With float16/bfloat16 X on a GPU that has the tensor cores for it, the folded path's Gram matrix
// and output GEMM run on tensor cores (nvcuda::wmma), M split once into 16-bit terms; everything else
// is float32 SIMT. Intermediate values are float32 in the workspace (layout from
// polynl::core::workspaceLayout), except those terms.
// Every launch goes through launchKernel, so that the CPU emulation in plugins/emulation can run
// this file unchanged.

#include "polynl_kernels.h"

#include "polynl_core.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#ifndef CUDA_EMULATION
#include <mma.h> // the emulation provides nvcuda::wmma itself
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>
#include <type_traits>

namespace polynl::kernels
{
namespace
{

// ---------------------------------------------------------------------------------------------
// Element access
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float toFloat(float v)
{
    return v;
}
__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}
__device__ __forceinline__ float toFloat(__nv_bfloat16 v)
{
    return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v)
{
    return __float2bfloat16_rn(v);
}

//! A batch of strided matrices: element (b, row, col) is data[b * batch + row * rows + col * cols].
template <typename T>
struct MatrixView
{
    T* data;
    int64_t batchStride;
    int64_t rowStride;
    int64_t colStride;

    __device__ __forceinline__ T& at(int64_t b, int64_t row, int64_t col) const
    {
        return data[b * batchStride + row * rowStride + col * colStride];
    }
};

//! X or Y as (positions x channels) matrices in the given layout.
template <typename T>
MatrixView<T> featureView(T* data, core::Problem const& p)
{
    int64_t const item = p.positions * p.channels;
    if (p.layout == core::Layout::kMaps)
    {
        return {data, item, 1, p.positions};
    }
    return {data, item, p.channels, 1};
}

//! A dense row-major (rows x cols) float32 matrix, one per batch item (batchStride 0: shared).
template <typename T>
MatrixView<T> denseView(T* data, int64_t cols, int64_t batchStride)
{
    return {data, batchStride, cols, 1};
}

// ---------------------------------------------------------------------------------------------
// Weight staging: convert the eight weights into float32 matrices and zero the accumulators, in
// one launch (blockIdx.y picks the weight, the last row of blocks zeroes; launches, not bytes,
// dominate at these sizes).
// ---------------------------------------------------------------------------------------------

//! Copy a (rows x cols) weight into a float32 matrix with leading dimension ld.
template <typename W>
struct WeightCopy
{
    W const* src;
    int64_t rows;
    int64_t cols;
    float* dst;
    int64_t ld;
};

template <typename W>
struct WeightStaging
{
    WeightCopy<W> copies[core::kNumWeights];
    float* zeroed;
    int64_t zeroedCount;
};

template <typename W>
__global__ void stageWeightsKernel(WeightStaging<W> staging)
{
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    int64_t const first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (blockIdx.y == core::kNumWeights)
    {
        for (int64_t e = first; e < staging.zeroedCount; e += stride)
        {
            staging.zeroed[e] = 0.F;
        }
        return;
    }
    WeightCopy<W> const copy = staging.copies[blockIdx.y];
    int64_t const count = copy.rows * copy.cols;
    for (int64_t e = first; e < count; e += stride)
    {
        int64_t const row = e / copy.cols;
        int64_t const col = e - row * copy.cols;
        copy.dst[row * copy.ld + col] = toFloat(copy.src[e]);
    }
}

// ---------------------------------------------------------------------------------------------
// Gram matrix and mean (folded path): S += X^T X / N and mu += X^T 1 / N over one slice of
// positions. One block owns a 32 x 32 tile of S on or above the diagonal and mirrors it.
// ---------------------------------------------------------------------------------------------

//! Positions [begin, end) of one of `slices` equal slices.
struct PositionSlice
{
    int64_t begin;
    int64_t end;

    __device__ PositionSlice(int64_t positions, int64_t slices, int64_t slice)
    {
        int64_t const perSlice = (positions + slices - 1) / slices;
        begin = slice * perSlice;
        end = min(positions, begin + perSlice);
    }
};

//! A Gram-kernel block: tile (blockIdx.x, blockIdx.y) of S, batch item and position slice from blockIdx.z.
struct GramBlock
{
    bool mirrored; //!< below the diagonal: S is symmetric, the mirrored block writes this tile
    bool diagonal;
    int64_t baseI;
    int64_t baseJ;
    int64_t b;
    PositionSlice slice;

    __device__ GramBlock(int tile, int64_t positions, int32_t slices)
        : mirrored(blockIdx.x > blockIdx.y)
        , diagonal(blockIdx.x == blockIdx.y)
        , baseI(static_cast<int64_t>(blockIdx.x) * tile)
        , baseJ(static_cast<int64_t>(blockIdx.y) * tile)
        , b(blockIdx.z / slices)
        , slice(positions, slices, blockIdx.z % slices)
    {
    }
};

constexpr int kGramTile = 32;
constexpr int kGramChunk = 32; // positions per shared-memory stage

//! Stages positions [n0, n0 + Chunk) of the channel tiles at baseI and baseJ into xi and xj as
//! [position][channel] in the tile's element type E, zero outside X; consecutive threads run along
//! the contiguous dimension of X for coalescing.
template <int Chunk, int Tile, int Threads, typename T, typename E, int Ld>
__device__ void stageGramChunk(MatrixView<T const> x, int64_t b, int64_t n0, int64_t end, int64_t channels,
    int64_t baseI, int64_t baseJ, E (&xi)[Chunk][Ld], E (&xj)[Chunk][Ld])
{
    bool const positionsContiguous = x.rowStride == 1;
    E const zero = fromFloat<E>(0.F);
    for (int e = threadIdx.x; e < Chunk * Tile; e += Threads)
    {
        int const p = positionsContiguous ? e % Chunk : e / Tile;
        int const c = positionsContiguous ? e / Chunk : e % Tile;
        int64_t const n = n0 + p;
        bool const inN = n < end;
        xi[p][c] = inN && baseI + c < channels ? fromFloat<E>(toFloat(x.at(b, n, baseI + c))) : zero;
        xj[p][c] = inN && baseJ + c < channels ? fromFloat<E>(toFloat(x.at(b, n, baseJ + c))) : zero;
    }
}
constexpr int kGramThreads = 256;
constexpr int64_t kGramMinPositionsPerSlice = 256;

template <typename T>
__global__ void __launch_bounds__(kGramThreads) gramKernel(MatrixView<T const> x, int64_t positions,
    int64_t channels, int32_t slices, float invPositions, float* gram, float* mu)
{
    GramBlock const block(kGramTile, positions, slices);
    if (block.mirrored)
    {
        return;
    }
    auto const [begin, end] = block.slice;
    int64_t const b = block.b;

    __shared__ float xi[kGramChunk][kGramTile + 1];
    __shared__ float xj[kGramChunk][kGramTile + 1];

    int const tx = threadIdx.x % 16;
    int const ty = threadIdx.x / 16;

    float acc[2][2] = {{0.F, 0.F}, {0.F, 0.F}};
    float columnSum[2] = {0.F, 0.F};
    for (int64_t n0 = begin; n0 < end; n0 += kGramChunk)
    {
        stageGramChunk<kGramChunk, kGramTile, kGramThreads>(
            x, b, n0, end, channels, block.baseI, block.baseJ, xi, xj);
        __syncthreads();
#pragma unroll 8
        for (int p = 0; p < kGramChunk; ++p)
        {
            float const a0 = xi[p][ty];
            float const a1 = xi[p][ty + 16];
            float const b0 = xj[p][tx];
            float const b1 = xj[p][tx + 16];
            acc[0][0] += a0 * b0;
            acc[0][1] += a0 * b1;
            acc[1][0] += a1 * b0;
            acc[1][1] += a1 * b1;
            if (block.diagonal && ty == 0)
            {
                columnSum[0] += b0;
                columnSum[1] += b1;
            }
        }
        __syncthreads();
    }

    float* s = gram + b * channels * channels;
    for (int a = 0; a < 2; ++a)
    {
        for (int c = 0; c < 2; ++c)
        {
            int64_t const i = block.baseI + ty + 16 * a;
            int64_t const j = block.baseJ + tx + 16 * c;
            if (i < channels && j < channels)
            {
                float const value = acc[a][c] * invPositions;
                atomicAdd(&s[i * channels + j], value);
                if (!block.diagonal)
                {
                    atomicAdd(&s[j * channels + i], value);
                }
            }
        }
    }
    if (block.diagonal && ty == 0)
    {
        for (int c = 0; c < 2; ++c)
        {
            int64_t const j = block.baseJ + tx + 16 * c;
            if (j < channels)
            {
                atomicAdd(&mu[b * channels + j], columnSum[c] * invPositions);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Block reduction helper
// ---------------------------------------------------------------------------------------------

constexpr int kReduceThreads = 256;

//! Sums `values[0..count)` over the block; the result is valid in thread 0.
template <int count>
__device__ void blockSum(float (&values)[count])
{
    __shared__ float partial[count][kReduceThreads / 32];
    int const lane = threadIdx.x % 32;
    int const warp = threadIdx.x / 32;
    for (int v = 0; v < count; ++v)
    {
        for (int offset = 16; offset > 0; offset /= 2)
        {
            values[v] += __shfl_down_sync(0xffffffffU, values[v], offset);
        }
        if (lane == 0)
        {
            partial[v][warp] = values[v];
        }
    }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        for (int v = 0; v < count; ++v)
        {
            values[v] = 0.F;
            for (int w = 0; w < kReduceThreads / 32; ++w)
            {
                values[v] += partial[v][w];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// m from the Gram matrix (folded path), one block per (j, b):
// m_j = wk_j^T S wv_j + bk_j (wv_j . mu) + bv_j (wk_j . mu) + bk_j bv_j.
// Warps take rows i of S, lanes run along k (coalesced).
// ---------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kReduceThreads) gramMeansKernel(float const* gram, float const* mu,
    float const* wkv, float const* bkv, int64_t channels, int64_t inner, float* means)
{
    int64_t const j = blockIdx.x;
    int64_t const b = blockIdx.y;
    int64_t const ld = 2 * inner;
    float const* s = gram + b * channels * channels;
    float const* muB = mu + b * channels;
    int const lane = threadIdx.x % 32;
    int const warp = threadIdx.x / 32;

    float sums[3] = {0.F, 0.F, 0.F}; // wk^T S wv, wv . mu, wk . mu
    for (int64_t i = warp; i < channels; i += kReduceThreads / 32)
    {
        float dot = 0.F;
        for (int64_t k = lane; k < channels; k += 32)
        {
            dot += s[i * channels + k] * wkv[k * ld + inner + j];
        }
        for (int offset = 16; offset > 0; offset /= 2)
        {
            dot += __shfl_down_sync(0xffffffffU, dot, offset);
        }
        if (lane == 0)
        {
            float const wk = wkv[i * ld + j];
            float const wv = wkv[i * ld + inner + j];
            sums[0] += wk * dot;
            sums[1] += wv * muB[i];
            sums[2] += wk * muB[i];
        }
    }
    blockSum(sums);
    if (threadIdx.x == 0)
    {
        float const bk = bkv[j];
        float const bv = bkv[inner + j];
        means[b * inner + j] = sums[0] + bk * sums[1] + bv * sums[2] + bk * bv;
    }
}

// ---------------------------------------------------------------------------------------------
// m from K and V (unfolded path): m_j += (1/N) sum_n K[n, j] V[n, j] over a slice of positions.
// kv is (B, N, 2C') with K in columns [0, C') and V in [C', 2C').
// ---------------------------------------------------------------------------------------------

constexpr int kMeansColumns = 32;
constexpr int kMeansRows = 8;

__global__ void __launch_bounds__(kMeansColumns* kMeansRows) tokenMeansKernel(float const* kv, int64_t positions,
    int64_t inner, int32_t slices, float invPositions, float* means)
{
    int64_t const j = blockIdx.x * static_cast<int64_t>(kMeansColumns) + threadIdx.x;
    int64_t const b = blockIdx.y;
    auto const [begin, end] = PositionSlice(positions, slices, blockIdx.z);
    float const* item = kv + b * positions * 2 * inner;

    float acc = 0.F;
    if (j < inner)
    {
        for (int64_t n = begin + threadIdx.y; n < end; n += kMeansRows)
        {
            acc += item[n * 2 * inner + j] * item[n * 2 * inner + inner + j];
        }
    }
    __shared__ float partial[kMeansRows][kMeansColumns];
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < inner)
    {
        for (int r = 1; r < kMeansRows; ++r)
        {
            acc += partial[r][threadIdx.x];
        }
        atomicAdd(&means[b * inner + j], acc * invPositions);
    }
}

// ---------------------------------------------------------------------------------------------
// Tiled GEMM with float32 accumulation: out(b, r, c) = epilogue(b, r, c, sum_k A(b, r, k) *
// scale(b, k) * W(b, k, c)). A is any strided view (X in either layout, or a float32 buffer),
// W is float32. 64 x 64 output tile per block, 16 x 16 threads with 4 x 4 outputs each.
// ---------------------------------------------------------------------------------------------

constexpr int kTileRows = 64;
constexpr int kTileCols = 64;
constexpr int kTileDepth = 16;
constexpr int kGemmThreads = 256;

//! Origin of this block's output tile. blockIdx.x runs over the column tiles of one row tile first, so
//! blocks that read the same rows of A run together and find them in L2.
struct OutputTile
{
    int64_t rowBase;
    int64_t colBase;

    __device__ OutputTile(int64_t cols, int tileRows, int tileCols)
    {
        int64_t const colTiles = (cols + tileCols - 1) / tileCols;
        rowBase = blockIdx.x / colTiles * tileRows;
        colBase = blockIdx.x % colTiles * tileCols;
    }
};

template <typename TA, typename Epilogue>
__global__ void __launch_bounds__(kGemmThreads) gemmKernel(MatrixView<TA const> a, float const* aColumnScale,
    int64_t scaleBatchStride, MatrixView<float const> w, int64_t rows, int64_t cols, int64_t depth,
    bool outputRowsContiguous, Epilogue epilogue)
{
    __shared__ float aTile[kTileDepth][kTileRows + 4];
    __shared__ float wTile[kTileDepth][kTileCols + 4];

    int64_t const b = blockIdx.z;
    auto const [rowBase, colBase] = OutputTile(cols, kTileRows, kTileCols);
    // Consecutive threads take consecutive rows when the output is contiguous along rows (maps).
    int const fast = threadIdx.x % 16;
    int const slow = threadIdx.x / 16;
    int const rowLane = outputRowsContiguous ? fast : slow;
    int const colLane = outputRowsContiguous ? slow : fast;
    bool const aRowsContiguous = a.rowStride == 1;

    float acc[4][4] = {};
    for (int64_t k0 = 0; k0 < depth; k0 += kTileDepth)
    {
        for (int e = threadIdx.x; e < kTileRows * kTileDepth; e += kGemmThreads)
        {
            int const r = aRowsContiguous ? e % kTileRows : e / kTileDepth;
            int const k = aRowsContiguous ? e / kTileRows : e % kTileDepth;
            int64_t const gr = rowBase + r;
            int64_t const gk = k0 + k;
            float v = 0.F;
            if (gr < rows && gk < depth)
            {
                v = toFloat(a.at(b, gr, gk));
                if (aColumnScale != nullptr)
                {
                    v *= aColumnScale[b * scaleBatchStride + gk];
                }
            }
            aTile[k][r] = v;
        }
        for (int e = threadIdx.x; e < kTileDepth * kTileCols; e += kGemmThreads)
        {
            int const c = e % kTileCols;
            int const k = e / kTileCols;
            int64_t const gc = colBase + c;
            int64_t const gk = k0 + k;
            wTile[k][c] = gc < cols && gk < depth ? w.at(b, gk, gc) : 0.F;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < kTileDepth; ++k)
        {
            float ar[4];
            float wr[4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
                ar[i] = aTile[k][rowLane + 16 * i];
                wr[i] = wTile[k][colLane + 16 * i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
            {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                {
                    acc[i][j] += ar[i] * wr[j];
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
    {
#pragma unroll
        for (int j = 0; j < 4; ++j)
        {
            int64_t const r = rowBase + rowLane + 16 * i;
            int64_t const c = colBase + colLane + 16 * j;
            if (r < rows && c < cols)
            {
                epilogue(b, r, c, acc[i][j]);
            }
        }
    }
}

//! Folded output: Y = X M + 1 c^T.
template <typename T>
struct ShiftEpilogue
{
    MatrixView<T> y;
    float const* shift;
    int64_t channels;

    __device__ void operator()(int64_t b, int64_t r, int64_t c, float acc) const
    {
        y.at(b, r, c) = fromFloat<T>(acc + shift[b * channels + c]);
    }
};

//! Folded mixing matrix and shift from ([Wq; bq^T] diag(m)) Wo: rows r < C give M = alpha I + Wq diag(m) Wo,
//! written over S; row C gives c^T = (bq * m)^T Wo + bo^T.
struct MixingEpilogue
{
    float* mixing;
    float* shift;
    float const* bo;
    int64_t channels;
    float alpha;

    __device__ void operator()(int64_t b, int64_t r, int64_t c, float acc) const
    {
        if (r < channels)
        {
            mixing[(b * channels + r) * channels + c] = acc + (r == c ? alpha : 0.F);
        }
        else
        {
            shift[b * channels + c] = acc + bo[c];
        }
    }
};

//! Unfolded projections into the float32 token buffer: out = acc + bias, optionally times m.
struct ProjectionEpilogue
{
    MatrixView<float> out;
    float const* bias;
    float const* gate; //!< m (B, C') or null
    int64_t gateStride;

    __device__ void operator()(int64_t b, int64_t r, int64_t c, float acc) const
    {
        float v = acc + bias[c];
        if (gate != nullptr)
        {
            v *= gate[b * gateStride + c];
        }
        out.at(b, r, c) = v;
    }
};

//! Unfolded output: Y = G Wo + bo + alpha X.
template <typename T>
struct ResidualEpilogue
{
    MatrixView<T> y;
    MatrixView<T const> x;
    float const* bias;
    float alpha;

    __device__ void operator()(int64_t b, int64_t r, int64_t c, float acc) const
    {
        y.at(b, r, c) = fromFloat<T>(acc + bias[c] + alpha * toFloat(x.at(b, r, c)));
    }
};

// ---------------------------------------------------------------------------------------------
// Tensor cores (folded path, float16/bfloat16 X): nvcuda::wmma 16 x 16 x 16 with float accumulators.
// Operand tiles are staged in shared memory in X's type (zero beyond the matrix), and accumulators
// go back through shared memory (store_matrix_sync) before any epilogue, so no code depends on the
// opaque fragment layout. 8 warps per block, each owning a 16 x 32 strip of a 64 x 64 output tile.
// ---------------------------------------------------------------------------------------------

namespace wmma = nvcuda::wmma;

constexpr int kMma = 16; //!< fragment edge (m = n = k)
constexpr int kTensorTile = 64;
constexpr int kTensorDepth = 32; //!< reduction depth per shared-memory stage (two k-steps)
constexpr int kTensorThreads = 256;
constexpr int kPad16 = 8; //!< row padding of 16-bit tiles (keeps ldm a multiple of 8 and rows 16-byte aligned)
constexpr int kPadFloat = 4;
constexpr int kTensorLd = kTensorTile + kPad16;
constexpr int kDepthLd = kTensorDepth + kPad16;
constexpr int kOutLd = kTensorTile + kPadFloat;

//! The architecture (10 * major + minor) from which wmma takes T: float16 70, bfloat16 80; 0 for float.
template <typename T>
__host__ __device__ constexpr int wmmaArch()
{
    return std::is_same_v<T, __half> ? 70 : std::is_same_v<T, __nv_bfloat16> ? 80 : 0;
}

//! Whether this compilation pass has wmma for T. (The emulation compiles the wmma branches for every
//! 16-bit T and leaves them empty at run time below CUDA_EMULATION_PTX, as nvcc leaves them empty here.)
template <typename T>
__device__ constexpr bool wmmaCompiled()
{
#if defined(CUDA_EMULATION)
    return wmmaArch<T>() != 0;
#elif defined(__CUDA_ARCH__)
    return wmmaArch<T>() != 0 && __CUDA_ARCH__ >= 10 * wmmaArch<T>();
#else
    return false;
#endif
}

//! Whether kernels running as architecture `arch` (deviceKernelArch) take X of type T on tensor cores.
template <typename T>
bool tensorCoresFor(int arch)
{
    return wmmaArch<T>() != 0 && arch >= wmmaArch<T>();
}

//! Warp w's strip of the 64 x 64 tile: rows 16 (w / 2), columns 32 (w % 2) + [0, 32).
struct WarpStrip
{
    int row;
    int col;

    __device__ WarpStrip()
        : row(kMma * static_cast<int>(threadIdx.x / 64))
        , col(32 * static_cast<int>(threadIdx.x / 32 % 2))
    {
    }
};

using Accumulator = wmma::fragment<wmma::accumulator, kMma, kMma, kMma, float>;

//! Positions a tensor-core accumulator sums before it is added into the block's float32 total: tensor
//! cores have been measured to truncate when they normalize fp32 sums (Fasi et al., 2021), which biases
//! long sums. The emulation flushes more often, so that its small test sizes cross a flush.
#if defined(CUDA_EMULATION)
constexpr int64_t kTensorFlushPositions = 2 * kTensorDepth;
#else
constexpr int64_t kTensorFlushPositions = 1024;
#endif
static_assert(kTensorFlushPositions % kTensorDepth == 0, "flush on a chunk boundary");

//! total += partial, then partial = 0 (fragments of one type map their elements alike).
__device__ void flushInto(Accumulator (&total)[2], Accumulator (&partial)[2])
{
    for (int f = 0; f < 2; ++f)
    {
        for (int i = 0; i < total[f].num_elements; ++i)
        {
            total[f].x[i] += partial[f].x[i];
        }
        wmma::fill_fragment(partial[f], 0.F);
    }
}

//! Stores a warp's two accumulators at its strip of `out` (row-major, leading dimension kOutLd).
__device__ void storeStrip(float (*out)[kOutLd], WarpStrip const& strip, Accumulator const (&acc)[2])
{
    for (int f = 0; f < 2; ++f)
    {
        wmma::store_matrix_sync(&out[strip.row][strip.col + kMma * f], acc[f], kOutLd, wmma::mem_row_major);
    }
}

//! gramKernel on tensor cores: one block per 64 x 64 tile of S on or above the diagonal and position slice.
//! S_IJ = X_I^T X_J: the staged chunk xi[position][channel] is X_I^T in column-major order.
template <typename T>
__global__ void __launch_bounds__(kTensorThreads) tensorGramKernel(MatrixView<T const> x, int64_t positions,
    int64_t channels, int32_t slices, float invPositions, float* gram, float* mu)
{
    if constexpr (wmmaCompiled<T>())
    {
#if defined(CUDA_EMULATION)
        if (cudaEmulationPtxVersion() < wmmaArch<T>())
        {
            return; // the branch nvcc compiles away for a lower virtual architecture
        }
#endif
        GramBlock const block(kTensorTile, positions, slices);
        if (block.mirrored)
        {
            return;
        }
        auto const [begin, end] = block.slice;
        int64_t const b = block.b;

        struct Shared
        {
            alignas(32) T xi[kTensorDepth][kTensorLd];
            alignas(32) T xj[kTensorDepth][kTensorLd];
            alignas(32) float out[kTensorTile][kOutLd];
        };
        __shared__ Shared shared;

        WarpStrip const strip;

        Accumulator total[2];
        Accumulator acc[2];
        for (int f = 0; f < 2; ++f)
        {
            wmma::fill_fragment(total[f], 0.F);
            wmma::fill_fragment(acc[f], 0.F);
        }
        float columnSum = 0.F; // mu: threads 0..63 of diagonal blocks, one channel each
        for (int64_t n0 = begin; n0 < end; n0 += kTensorDepth)
        {
            if (n0 > begin && (n0 - begin) % kTensorFlushPositions == 0)
            {
                flushInto(total, acc);
            }
            stageGramChunk<kTensorDepth, kTensorTile, kTensorThreads>(
                x, b, n0, end, channels, block.baseI, block.baseJ, shared.xi, shared.xj);
            __syncthreads();
            for (int k = 0; k < kTensorDepth; k += kMma)
            {
                wmma::fragment<wmma::matrix_a, kMma, kMma, kMma, T, wmma::col_major> xiT;
                wmma::load_matrix_sync(xiT, &shared.xi[k][strip.row], kTensorLd);
                for (int f = 0; f < 2; ++f)
                {
                    wmma::fragment<wmma::matrix_b, kMma, kMma, kMma, T, wmma::row_major> xj;
                    wmma::load_matrix_sync(xj, &shared.xj[k][strip.col + kMma * f], kTensorLd);
                    wmma::mma_sync(acc[f], xiT, xj, acc[f]);
                }
            }
            if (block.diagonal && threadIdx.x < kTensorTile)
            {
                for (int p = 0; p < kTensorDepth; ++p)
                {
                    columnSum += toFloat(shared.xj[p][threadIdx.x]);
                }
            }
            __syncthreads();
        }

        flushInto(total, acc);
        storeStrip(shared.out, strip, total);
        __syncthreads();
        float* s = gram + b * channels * channels;
        for (int e = threadIdx.x; e < kTensorTile * kTensorTile; e += kTensorThreads)
        {
            int64_t const i = block.baseI + e / kTensorTile;
            int64_t const j = block.baseJ + e % kTensorTile;
            if (i < channels && j < channels)
            {
                float const value = shared.out[e / kTensorTile][e % kTensorTile] * invPositions;
                atomicAdd(&s[i * channels + j], value);
                if (!block.diagonal)
                {
                    atomicAdd(&s[j * channels + i], value);
                }
            }
        }
        if (block.diagonal && threadIdx.x < kTensorTile && block.baseJ + threadIdx.x < channels)
        {
            atomicAdd(&mu[b * channels + block.baseJ + threadIdx.x], columnSum * invPositions);
        }
    }
}

//! Terms of X's type that M is split into (polynl::core::mixingSplitTerms): their sum carries M's
//! float32 precision (float16: about 2^-22 relative; bfloat16: about 2^-24).
template <typename T>
constexpr int kSplitTerms = core::mixingSplitTerms(std::is_same_v<T, __half> ? core::DataType::kFloat16
        : std::is_same_v<T, __nv_bfloat16>                                 ? core::DataType::kBFloat16
                                                                           : core::DataType::kFloat32);

//! M split once per call for tensorGemmKernel: column c of M(b) is scaled by 2^-exponents[b, c]
//! (its largest magnitude into [0.5, 1), so float16 neither overflows nor underflows) and written
//! as kSplitTerms<T> matrices of type T, terms[b, t] row-major (depth x cols), whose sum is the
//! scaled column exactly enough that their products with A accumulate in one float accumulator.
template <typename T>
struct SplitMatrix
{
    using Exponent = std::conditional_t<std::is_const_v<T>, int const, int>;

    T* terms;
    Exponent* exponents;
    int64_t depth;
    int64_t cols;

    __device__ __forceinline__ T& term(int64_t b, int t, int64_t k, int64_t c) const
    {
        return terms[((b * kSplitTerms<std::remove_const_t<T>> + t) * depth + k) * cols + c];
    }
};

//! One block per 64 columns of M(b): column scales, then the terms of those columns.
template <typename T>
__global__ void __launch_bounds__(kTensorThreads) splitMixingKernel(MatrixView<float const> w, SplitMatrix<T> split)
{
    constexpr int kScanRows = kTensorThreads / kTensorTile;
    __shared__ float columnMax[kScanRows][kTensorTile];
    __shared__ int exponent[kTensorTile];
    int64_t const b = blockIdx.y;
    int const c = threadIdx.x % kTensorTile;
    int64_t const gc = static_cast<int64_t>(blockIdx.x) * kTensorTile + c;
    float largest = 0.F;
    for (int64_t k = threadIdx.x / kTensorTile; k < split.depth && gc < split.cols; k += kScanRows)
    {
        largest = fmaxf(largest, fabsf(w.at(b, k, gc)));
    }
    columnMax[threadIdx.x / kTensorTile][c] = largest;
    __syncthreads();
    if (threadIdx.x < kTensorTile)
    {
        for (int s = 0; s < kScanRows; ++s)
        {
            largest = fmaxf(largest, columnMax[s][c]);
        }
        frexpf(largest, &exponent[c]);
        if (gc < split.cols)
        {
            split.exponents[b * split.cols + gc] = exponent[c];
        }
    }
    __syncthreads();
    for (int64_t k = threadIdx.x / kTensorTile; k < split.depth && gc < split.cols; k += kScanRows)
    {
        float rest = ldexpf(w.at(b, k, gc), -exponent[c]);
        for (int t = 0; t < kSplitTerms<T>; ++t)
        {
            T const term = fromFloat<T>(rest);
            split.term(b, t, k, gc) = term;
            rest -= toFloat(term); // exact: term is rest rounded
        }
    }
}

//! out(b, r, c) = epilogue(b, r, c, sum_k A(b, r, k) W(b, k, c)) on tensor cores, A of type T and W
//! given as its split (splitMixingKernel); the epilogue gets the sum with the column scale undone.
template <typename T, typename Epilogue>
__global__ void __launch_bounds__(kTensorThreads) tensorGemmKernel(MatrixView<T const> a, SplitMatrix<T const> w,
    int64_t rows, bool outputRowsContiguous, Epilogue epilogue)
{
    if constexpr (wmmaCompiled<T>())
    {
#if defined(CUDA_EMULATION)
        if (cudaEmulationPtxVersion() < wmmaArch<T>())
        {
            return; // the branch nvcc compiles away for a lower virtual architecture
        }
#endif
        constexpr int kTerms = kSplitTerms<T>;
        struct Shared
        {
            alignas(32) T a[kTensorTile][kDepthLd];
            alignas(32) T w[kTerms][kTensorDepth][kTensorLd];
            alignas(32) float out[kTensorTile][kOutLd];
            int exponent[kTensorTile];
        };
        __shared__ Shared shared;

        int64_t const b = blockIdx.z;
        int64_t const depth = w.depth;
        int64_t const cols = w.cols;
        auto const [rowBase, colBase] = OutputTile(cols, kTensorTile, kTensorTile);
        bool const aRowsContiguous = a.rowStride == 1;
        T const zero = fromFloat<T>(0.F);
        WarpStrip const strip;

        if (threadIdx.x < kTensorTile && colBase + threadIdx.x < cols)
        {
            shared.exponent[threadIdx.x] = w.exponents[b * cols + colBase + threadIdx.x];
        }
        Accumulator acc[2];
        wmma::fill_fragment(acc[0], 0.F);
        wmma::fill_fragment(acc[1], 0.F);
        for (int64_t k0 = 0; k0 < depth; k0 += kTensorDepth)
        {
            for (int e = threadIdx.x; e < kTensorTile * kTensorDepth; e += kTensorThreads)
            {
                int const r = aRowsContiguous ? e % kTensorTile : e / kTensorDepth;
                int const k = aRowsContiguous ? e / kTensorTile : e % kTensorDepth;
                int64_t const gr = rowBase + r;
                int64_t const gk = k0 + k;
                shared.a[r][k] = gr < rows && gk < depth ? a.at(b, gr, gk) : zero;
            }
            for (int e = threadIdx.x; e < kTerms * kTensorDepth * kTensorTile; e += kTensorThreads)
            {
                int const c = e % kTensorTile;
                int const k = e / kTensorTile % kTensorDepth;
                int const t = e / (kTensorTile * kTensorDepth);
                int64_t const gc = colBase + c;
                int64_t const gk = k0 + k;
                shared.w[t][k][c] = gc < cols && gk < depth ? w.term(b, t, gk, gc) : zero;
            }
            __syncthreads();
            for (int k = 0; k < kTensorDepth; k += kMma)
            {
                wmma::fragment<wmma::matrix_a, kMma, kMma, kMma, T, wmma::row_major> aFragment;
                wmma::load_matrix_sync(aFragment, &shared.a[strip.row][k], kDepthLd);
                for (int f = 0; f < 2; ++f)
                {
                    for (int t = 0; t < kTerms; ++t)
                    {
                        wmma::fragment<wmma::matrix_b, kMma, kMma, kMma, T, wmma::row_major> wFragment;
                        wmma::load_matrix_sync(wFragment, &shared.w[t][k][strip.col + kMma * f], kTensorLd);
                        wmma::mma_sync(acc[f], aFragment, wFragment, acc[f]);
                    }
                }
            }
            __syncthreads();
        }

        storeStrip(shared.out, strip, acc);
        __syncthreads();
        for (int e = threadIdx.x; e < kTensorTile * kTensorTile; e += kTensorThreads)
        {
            // Consecutive threads take consecutive rows when the output is contiguous along rows (maps).
            int const r = outputRowsContiguous ? e % kTensorTile : e / kTensorTile;
            int const c = outputRowsContiguous ? e / kTensorTile : e % kTensorTile;
            if (rowBase + r < rows && colBase + c < cols)
            {
                epilogue(b, rowBase + r, colBase + c, ldexpf(shared.out[r][c], shared.exponent[c]));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------

thread_local std::string lastError;

PolyNLStatus fail(PolyNLStatus status, std::string message)
{
    lastError = std::move(message);
    return status;
}

constexpr int64_t kMaxGridYZ = 65535;

//! Launches `kernel` on `stream` without dynamic shared memory. Compiled as C++ with the CPU emulation
//! (plugins/emulation/cuda_emulation.h), the emulator runs the grid instead.
template <typename... Params, typename... Args>
void launchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, Args... args)
{
#ifdef CUDA_EMULATION
    cuda_emulation::launch(grid, block, stream, [=] { kernel(args...); });
#else
    kernel<<<grid, block, 0, stream>>>(args...);
#endif
}

int32_t ceilDiv(int64_t a, int64_t b)
{
    return static_cast<int32_t>((a + b - 1) / b);
}

//! Splits positions so that about `targetBlocks` blocks run, each with enough positions.
int32_t positionSlices(int64_t positions, int64_t blocksPerSlice, int64_t batch)
{
    constexpr int64_t kTargetBlocks = 1024;
    int64_t const byWork = std::max<int64_t>(1, positions / kGramMinPositionsPerSlice);
    int64_t const byOccupancy = std::max<int64_t>(1, kTargetBlocks / std::max<int64_t>(1, blocksPerSlice * batch));
    int64_t const byGrid = std::max<int64_t>(1, kMaxGridYZ / std::max<int64_t>(1, batch));
    return static_cast<int32_t>(std::min({byWork, byOccupancy, byGrid}));
}

template <typename TA, typename Epilogue>
void launchGemm(MatrixView<TA const> a, float const* aColumnScale, int64_t scaleBatchStride,
    MatrixView<float const> w, int64_t batch, int64_t rows, int64_t cols, int64_t depth, bool outputRowsContiguous,
    Epilogue epilogue, cudaStream_t stream)
{
    dim3 const grid(ceilDiv(rows, kTileRows) * ceilDiv(cols, kTileCols), 1, static_cast<uint32_t>(batch));
    launchKernel(gemmKernel<TA, Epilogue>, grid, kGemmThreads, stream, a, aColumnScale, scaleBatchStride, w, rows,
        cols, depth, outputRowsContiguous, epilogue);
}

//! Float32 pointers into one workspace.
struct Buffers
{
    float *wq, *bq, *wkv, *bkv, *wo, *bo, *means, *mu, *gram, *shift, *tokens;
    void* mixingTerms;
    int* mixingExponents;
};

Buffers buffersIn(void* workspace, core::WorkspaceLayout const& layout, core::Problem const& p)
{
    auto at = [workspace](size_t offset) { return reinterpret_cast<float*>(static_cast<char*>(workspace) + offset); };
    return {at(layout.wq), at(layout.wq) + p.channels * p.inner, at(layout.wkv), at(layout.bkv), at(layout.wo),
        at(layout.bo), at(layout.means), at(layout.mu), at(layout.gram), at(layout.shift), at(layout.tokens),
        static_cast<char*>(workspace) + layout.mixingTerms,
        reinterpret_cast<int*>(static_cast<char*>(workspace) + layout.mixingExponents)};
}

//! Stages the weights and zeroes the accumulators [zeroedBegin, zeroedEnd) of the workspace.
template <typename W>
void stageWeights(core::Problem const& p, void const* const* weights, Buffers const& buf, float* zeroed,
    int64_t zeroedCount, cudaStream_t stream)
{
    int64_t const c = p.channels;
    int64_t const r = p.inner;
    auto src = [weights](int i) { return static_cast<W const*>(weights[i]); };
    // Contract order: Wq, bq, Wk, bk, Wv, bv, Wo, bo; K and V share one (C x 2C') matrix.
    WeightStaging<W> const staging{{{src(0), c, r, buf.wq, r}, {src(1), 1, r, buf.bq, r},
        {src(2), c, r, buf.wkv, 2 * r}, {src(3), 1, r, buf.bkv, r}, {src(4), c, r, buf.wkv + r, 2 * r},
        {src(5), 1, r, buf.bkv + r, r}, {src(6), r, c, buf.wo, c}, {src(7), 1, c, buf.bo, c}},
        zeroed, zeroedCount};
    constexpr int kThreads = 256;
    int32_t const blocks = std::min<int32_t>(ceilDiv(std::max(c * r, zeroedCount), kThreads), 1024);
    launchKernel(stageWeightsKernel<W>, dim3(blocks, core::kNumWeights + 1), kThreads, stream, staging);
}

//! The architecture the kernels run as on the current device (10 * major + minor), queried once per
//! device: its compute capability, capped by the virtual architecture of the code it runs. A build whose
//! best match for the device is PTX of a lower architecture (compute_75 JIT-compiled on an SM90 GPU) has
//! wmma kernels that nvcc compiled empty for bfloat16, so they must not be chosen there.
cudaError_t deviceKernelArch(int* arch)
{
    constexpr int kCachedDevices = 64;
    static std::atomic<int> cached[kCachedDevices]; // 0: not queried yet
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    bool const cacheable = device >= 0 && device < kCachedDevices;
    if (err != cudaSuccess || (cacheable && (*arch = cached[device].load(std::memory_order_relaxed)) != 0))
    {
        return err;
    }
    int major = 0;
    int minor = 0;
    cudaFuncAttributes compiled{};
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (err == cudaSuccess)
    {
        err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    }
    if (err == cudaSuccess)
    {
        err = cudaFuncGetAttributes(&compiled, reinterpret_cast<void const*>(&tensorGramKernel<__half>));
    }
    *arch = std::min(10 * major + minor, compiled.ptxVersion);
    if (err == cudaSuccess && cacheable)
    {
        cached[device].store(*arch, std::memory_order_relaxed);
    }
    return err;
}

template <typename T>
void forwardFolded(core::Problem const& p, T const* x, T* y, Buffers const& buf, int arch, cudaStream_t stream)
{
    int64_t const c = p.channels;
    int64_t const r = p.inner;
    auto const xView = featureView(x, p);
    auto const yView = featureView(y, p);
    float const invN = 1.F / static_cast<float>(p.positions);
    bool const tensorCores = tensorCoresFor<T>(arch);

    int32_t const tiles = ceilDiv(c, tensorCores ? kTensorTile : kGramTile);
    int64_t const triangle = static_cast<int64_t>(tiles) * (tiles + 1) / 2;
    int32_t const slices = positionSlices(p.positions, triangle, p.batch);
    dim3 const gramGrid(tiles, tiles, static_cast<uint32_t>(p.batch * slices));
    if (tensorCores)
    {
        launchKernel(tensorGramKernel<T>, gramGrid, kTensorThreads, stream, xView, p.positions, c, slices, invN,
            buf.gram, buf.mu);
    }
    else
    {
        launchKernel(
            gramKernel<T>, gramGrid, kGramThreads, stream, xView, p.positions, c, slices, invN, buf.gram, buf.mu);
    }

    launchKernel(gramMeansKernel, dim3(static_cast<uint32_t>(r), static_cast<uint32_t>(p.batch)), kReduceThreads,
        stream, buf.gram, buf.mu, buf.wkv, buf.bkv, c, r, buf.means);

    // M = alpha I + (Wq diag(m)) Wo overwrites S (no longer needed once m is known); bq, Wq's last
    // staged row, gives c in the same GEMM.
    launchGemm<float>(denseView<float const>(buf.wq, r, 0), buf.means, r, denseView<float const>(buf.wo, c, 0),
        p.batch, c + 1, c, r, false, MixingEpilogue{buf.gram, buf.shift, buf.bo, c, p.alpha}, stream);

    auto const mixing = denseView<float const>(buf.gram, c, c * c);
    ShiftEpilogue<T> const output{yView, buf.shift, c};
    if (tensorCores)
    {
        if constexpr (kSplitTerms<T> > 0)
        {
            SplitMatrix<T> const split{static_cast<T*>(buf.mixingTerms), buf.mixingExponents, c, c};
            launchKernel(splitMixingKernel<T>, dim3(ceilDiv(c, kTensorTile), static_cast<uint32_t>(p.batch)),
                kTensorThreads, stream, mixing, split);
            SplitMatrix<T const> const splitView{split.terms, split.exponents, c, c};
            dim3 const grid(
                ceilDiv(p.positions, kTensorTile) * ceilDiv(c, kTensorTile), 1, static_cast<uint32_t>(p.batch));
            launchKernel(tensorGemmKernel<T, ShiftEpilogue<T>>, grid, kTensorThreads, stream, xView, splitView,
                p.positions, yView.rowStride == 1, output);
        }
    }
    else
    {
        launchGemm<T>(xView, nullptr, 0, mixing, p.batch, p.positions, c, c, yView.rowStride == 1, output, stream);
    }
}

template <typename T>
void forwardUnfolded(core::Problem const& p, T const* x, T* y, Buffers const& buf, cudaStream_t stream)
{
    int64_t const c = p.channels;
    int64_t const r = p.inner;
    int64_t const n = p.positions;
    auto const xView = featureView(x, p);
    auto const yView = featureView(y, p);
    float const invN = 1.F / static_cast<float>(n);

    // [K | V] into the token buffer (B, N, 2C').
    MatrixView<float> const kv{buf.tokens, n * 2 * r, 2 * r, 1};
    launchGemm<T>(xView, nullptr, 0, denseView<float const>(buf.wkv, 2 * r, 0), p.batch, n, 2 * r, c, false,
        ProjectionEpilogue{kv, buf.bkv, nullptr, 0}, stream);

    int32_t const columnBlocks = ceilDiv(r, kMeansColumns);
    int32_t const slices = positionSlices(n, columnBlocks, p.batch);
    launchKernel(tokenMeansKernel, dim3(columnBlocks, static_cast<uint32_t>(p.batch), slices),
        dim3(kMeansColumns, kMeansRows), stream, buf.tokens, n, r, slices, invN, buf.means);

    // G = (X Wq + bq) * m overwrites the token buffer as (B, N, C').
    MatrixView<float> const gated{buf.tokens, n * r, r, 1};
    launchGemm<T>(xView, nullptr, 0, denseView<float const>(buf.wq, r, 0), p.batch, n, r, c, false,
        ProjectionEpilogue{gated, buf.bq, buf.means, r}, stream);

    launchGemm<float>(MatrixView<float const>{buf.tokens, n * r, r, 1}, nullptr, 0,
        denseView<float const>(buf.wo, c, 0), p.batch, n, c, r, yView.rowStride == 1,
        ResidualEpilogue<T>{yView, xView, buf.bo, p.alpha}, stream);
}

template <typename T>
void forwardTyped(core::Problem const& p, core::Path path, void const* x, void* y, Buffers const& buf, int arch,
    cudaStream_t stream)
{
    if (path == core::Path::kFolded)
    {
        forwardFolded<T>(p, static_cast<T const*>(x), static_cast<T*>(y), buf, arch, stream);
    }
    else
    {
        forwardUnfolded<T>(p, static_cast<T const*>(x), static_cast<T*>(y), buf, stream);
    }
}

bool isKnownEnum(int32_t value, int32_t count)
{
    return value >= 0 && value < count;
}

//! Validates the descriptor and resolves its problem and path.
PolyNLStatus resolve(PolyNLDesc const* desc, core::Problem* problem, core::Path* path)
{
    if (desc == nullptr)
    {
        return fail(POLYNL_STATUS_INVALID_ARGUMENT, "desc is null");
    }
    if (!isKnownEnum(desc->layout, 2) || !isKnownEnum(desc->x_dtype, 3) || !isKnownEnum(desc->weight_dtype, 3)
        || !isKnownEnum(desc->path, 3))
    {
        return fail(POLYNL_STATUS_INVALID_ARGUMENT, "desc has an unknown layout, dtype or path value");
    }
    problem->batch = desc->batch;
    problem->channels = desc->channels;
    problem->inner = desc->inner;
    problem->positions = desc->positions;
    problem->layout = static_cast<core::Layout>(desc->layout);
    problem->xType = static_cast<core::DataType>(desc->x_dtype);
    problem->weightType = static_cast<core::DataType>(desc->weight_dtype);
    problem->alpha = desc->alpha;
    std::string error = core::validateProblem(*problem);
    if (!error.empty())
    {
        bool const typeError = problem->batch >= 0 && problem->positions >= 0 && problem->channels >= 1
            && problem->inner >= 1;
        return fail(typeError ? POLYNL_STATUS_UNSUPPORTED : POLYNL_STATUS_INVALID_ARGUMENT, error);
    }
    if (problem->batch > kMaxGridYZ || problem->inner > kMaxGridYZ)
    {
        return fail(POLYNL_STATUS_UNSUPPORTED, "batch and C' must be <= 65535");
    }
    switch (desc->path)
    {
    case POLYNL_PATH_FOLDED: *path = core::Path::kFolded; break;
    case POLYNL_PATH_UNFOLDED: *path = core::Path::kUnfolded; break;
    default: *path = core::choosePath(problem->channels, problem->inner, problem->positions); break;
    }
    return POLYNL_STATUS_SUCCESS;
}

} // namespace
} // namespace polynl::kernels

using namespace polynl;
using namespace polynl::kernels;

extern "C" PolyNLStatus polynl_workspace_size(PolyNLDesc const* desc, size_t* bytes)
{
    core::Problem problem;
    core::Path path{};
    PolyNLStatus const status = resolve(desc, &problem, &path);
    if (status != POLYNL_STATUS_SUCCESS)
    {
        return status;
    }
    if (bytes == nullptr)
    {
        return fail(POLYNL_STATUS_INVALID_ARGUMENT, "bytes is null");
    }
    *bytes = core::workspaceLayout(problem, path).total;
    return POLYNL_STATUS_SUCCESS;
}

extern "C" PolyNLStatus polynl_resolve_path(PolyNLDesc const* desc, int32_t* path)
{
    core::Problem problem;
    core::Path resolved{};
    PolyNLStatus const status = resolve(desc, &problem, &resolved);
    if (status != POLYNL_STATUS_SUCCESS)
    {
        return status;
    }
    if (path == nullptr)
    {
        return fail(POLYNL_STATUS_INVALID_ARGUMENT, "path is null");
    }
    *path = resolved == core::Path::kFolded ? POLYNL_PATH_FOLDED : POLYNL_PATH_UNFOLDED;
    return POLYNL_STATUS_SUCCESS;
}

extern "C" PolyNLStatus polynl_forward(PolyNLDesc const* desc, void const* x, void const* const* weights, void* y,
    void* workspace, size_t workspace_bytes, cudaStream_t stream)
{
    core::Problem problem;
    core::Path path{};
    PolyNLStatus const status = resolve(desc, &problem, &path);
    if (status != POLYNL_STATUS_SUCCESS)
    {
        return status;
    }
    if (problem.batch == 0 || problem.positions == 0)
    {
        return POLYNL_STATUS_SUCCESS; // Y is empty.
    }
    if (x == nullptr || y == nullptr || weights == nullptr || workspace == nullptr)
    {
        return fail(POLYNL_STATUS_INVALID_ARGUMENT, "x, weights, y and workspace must not be null");
    }
    for (int32_t i = 0; i < core::kNumWeights; ++i)
    {
        if (weights[i] == nullptr)
        {
            return fail(POLYNL_STATUS_INVALID_ARGUMENT, std::string("weight ") + core::inputName(i + 1) + " is null");
        }
    }
    core::WorkspaceLayout const layout = core::workspaceLayout(problem, path);
    if (workspace_bytes < layout.total)
    {
        return fail(POLYNL_STATUS_WORKSPACE_TOO_SMALL,
            "workspace has " + std::to_string(workspace_bytes) + " bytes; needs " + std::to_string(layout.total));
    }
    if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0)
    {
        return fail(POLYNL_STATUS_INVALID_ARGUMENT, "workspace must be 256-byte aligned");
    }
    Buffers const buf = buffersIn(workspace, layout, problem);
    auto* const zeroed = reinterpret_cast<float*>(static_cast<char*>(workspace) + layout.zeroedBegin);
    auto const zeroedCount = static_cast<int64_t>((layout.zeroedEnd - layout.zeroedBegin) / sizeof(float));
    // A pending error of another component is not cleared here: it surfaces in the check below.
    int arch = 0;
    cudaError_t err = deviceKernelArch(&arch);
    if (err == cudaSuccess)
    {
        switch (problem.weightType)
        {
        case core::DataType::kFloat32: stageWeights<float>(problem, weights, buf, zeroed, zeroedCount, stream); break;
        case core::DataType::kFloat16: stageWeights<__half>(problem, weights, buf, zeroed, zeroedCount, stream); break;
        case core::DataType::kBFloat16:
            stageWeights<__nv_bfloat16>(problem, weights, buf, zeroed, zeroedCount, stream);
            break;
        }
        switch (problem.xType)
        {
        case core::DataType::kFloat32: forwardTyped<float>(problem, path, x, y, buf, arch, stream); break;
        case core::DataType::kFloat16: forwardTyped<__half>(problem, path, x, y, buf, arch, stream); break;
        case core::DataType::kBFloat16: forwardTyped<__nv_bfloat16>(problem, path, x, y, buf, arch, stream); break;
        }
        err = cudaGetLastError();
    }
    if (err != cudaSuccess)
    {
        return fail(POLYNL_STATUS_CUDA_ERROR, std::string("CUDA error: ") + cudaGetErrorString(err));
    }
    return POLYNL_STATUS_SUCCESS;
}

extern "C" char const* polynl_status_string(PolyNLStatus status)
{
    switch (status)
    {
    case POLYNL_STATUS_SUCCESS: return "success";
    case POLYNL_STATUS_INVALID_ARGUMENT: return "invalid argument";
    case POLYNL_STATUS_UNSUPPORTED: return "unsupported";
    case POLYNL_STATUS_WORKSPACE_TOO_SMALL: return "workspace too small";
    case POLYNL_STATUS_CUDA_ERROR: return "CUDA error";
    }
    return "unknown status";
}

extern "C" char const* polynl_last_error(void)
{
    return lastError.c_str();
}
