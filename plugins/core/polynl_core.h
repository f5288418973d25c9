// Functional core of the PolyNL block: shape rules, supported types, path choice,
// workspace layout and a CPU reference. Plain C++17: no TensorRT and no CUDA types,
// so the TensorRT plugin, the kernel library and the CPU tests all share it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace polynl::core
{

enum class Layout : int32_t
{
    kMaps = 0,   //!< X is (B, C, H, W): N = H * W positions, channels first.
    kTokens = 1, //!< X is (B, N, C): channels last.
};

enum class DataType : int32_t
{
    kFloat32 = 0,
    kFloat16 = 1,
    kBFloat16 = 2,
};

enum class Path : int32_t
{
    kFolded = 0,   //!< Gram form: S = X^T X / N, mu, then Y = X M + 1 c^T.
    kUnfolded = 1, //!< Low-rank form: K, V, m, then ((X Wq + bq) * m) Wo + bo + alpha X.
};

//! Contract input order: X, Wq, bq, Wk, bk, Wv, bv, Wo, bo.
enum Input : int32_t
{
    kX = 0,
    kWq,
    kBq,
    kWk,
    kBk,
    kWv,
    kBv,
    kWo,
    kBo,
    kNumInputs,
};

constexpr int32_t kNumWeights = kNumInputs - 1;

//! Unknown extent of a dynamic dimension (TensorRT reports -1 at build time).
constexpr int64_t kUnknown = -1;

//! The unfolded path is used when inner <= kUnfoldedMaxRatio * channels
//! (polynl_deploy.defaults.UNFOLDED_MAX_RATIO).
constexpr double kUnfoldedMaxRatio = 0.25;

//! ... and at positions N where the folded path's flops exceed kFoldedFlopsMarginNum /
//! kFoldedFlopsMarginDen times the unfolded path's (polynl_deploy.defaults.FOLDED_FLOPS_MARGIN).
constexpr int64_t kFoldedFlopsMarginNum = 5;
constexpr int64_t kFoldedFlopsMarginDen = 4;

using Shape = std::vector<int64_t>;

//! One block invocation. weightType is the type of all eight weight tensors:
//! the type of X or float32.
struct Problem
{
    int64_t batch = 0;
    int64_t channels = 0;  //!< C
    int64_t inner = 0;     //!< C'
    int64_t positions = 0; //!< N
    Layout layout = Layout::kMaps;
    DataType xType = DataType::kFloat32;
    DataType weightType = DataType::kFloat32;
    float alpha = 1.0F;
};

std::optional<Layout> parseLayout(std::string_view name);
char const* layoutName(Layout layout);
char const* dataTypeName(DataType type);
char const* inputName(int32_t index);

//! Output shape: identical to the shape of X.
Shape outputShape(Shape const& x);

//! Checks the nine input shapes against each other and the layout. Dimensions may be
//! kUnknown (checked again once known). On success returns "" and, when problem is not
//! null, fills its batch/channels/inner/positions/layout (kUnknown where not known).
std::string validateShapes(std::vector<Shape> const& inputs, Layout layout, Problem* problem);

//! Checks a fully known problem (all extents >= 0, C and C' >= 1, supported types).
std::string validateProblem(Problem const& problem);

//! X and Y share one of float32/float16/bfloat16; weights are that type or float32.
bool isSupportedType(DataType xType, DataType weightType);

//! True where the low-rank route is cheaper than the C x C Gram route at any N: C' <= C / 4.
bool prefersUnfolded(int64_t channels, int64_t inner);

//! Whether the folded path's 4 N C^2 + 4 C^2 C' flops (Gram matrix and output GEMM, then m and M)
//! exceed the margin times the unfolded path's 8 N C C': true below some N, false above it.
bool foldedCostsMore(int64_t channels, int64_t inner, int64_t positions);

//! The path for a call: unfolded where prefersUnfolded, or where foldedCostsMore at these positions
//! (ignored when positions is kUnknown), else folded.
Path choosePath(int64_t channels, int64_t inner, int64_t positions);

//! Terms of X's 16-bit type that the tensor-core output GEMM splits the float32 matrix M into:
//! float16 (11-bit significands) two, bfloat16 (8 bits) three; none for float32 X.
constexpr int32_t mixingSplitTerms(DataType xType)
{
    return xType == DataType::kFloat16 ? 2 : xType == DataType::kBFloat16 ? 3 : 0;
}

//! Byte offsets of the buffers the kernels use inside one workspace (float32 unless said).
//! Every offset is 256-byte aligned; buffers unused by a path have size 0.
struct WorkspaceLayout
{
    // Staged float32 weights: Wq with bq as its last row (C + 1, C'), Wkv = [Wk | Wv] (C, 2C'),
    // bkv = [bk | bv], Wo (C', C), bo. (One GEMM then gives M and c = Wo^T (bq * m) together.)
    size_t wq, wkv, bkv, wo, bo;
    // Zero-initialised accumulators: m (B, C'), mu (B, C), S then M (B, C, C).
    size_t zeroedBegin, means, mu, gram, zeroedEnd;
    // Folded: shift c (B, C). Unfolded: [K | V] then Q * m, (B, N, 2C').
    size_t shift, tokens;
    // Folded with 16-bit X: M split into mixingSplitTerms(xType) matrices of X's type (B, terms, C, C),
    // each column scaled by 2^-e, and the int32 exponents e (B, C).
    size_t mixingTerms, mixingExponents;
    size_t total;
};

WorkspaceLayout workspaceLayout(Problem const& problem, Path path);

//! Workspace bytes that serve every call with batch <= largest.batch and positions in
//! [fewestPositions, largest.positions], each on the path choosePath picks for it.
size_t workspaceBound(Problem const& largest, int64_t fewestPositions);

//! CPU reference in double precision. weights[0..7] follow the contract order
//! (Wq, bq, Wk, bk, Wv, bv, Wo, bo); x and y use the problem's layout.
//! kUnfolded evaluates the paper order; kFolded the Gram form.
void referenceForward(Problem const& problem, Path path, double const* x, double const* const* weights, double* y);

} // namespace polynl::core
