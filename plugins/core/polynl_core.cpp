#include "polynl_core.h"

#include <algorithm>
#include <sstream>
#include <tuple>

namespace polynl::core
{
namespace
{

bool known(int64_t extent)
{
    return extent != kUnknown;
}

bool compatible(int64_t a, int64_t b)
{
    return !known(a) || !known(b) || a == b;
}

std::string formatShape(Shape const& shape)
{
    std::ostringstream out;
    out << "(";
    for (size_t i = 0; i < shape.size(); ++i)
    {
        out << (i ? ", " : "") << (known(shape[i]) ? std::to_string(shape[i]) : "?");
    }
    out << (shape.size() == 1 ? ",)" : ")");
    return out.str();
}

//! "" when shape matches expected (kUnknown matches anything), else a message.
std::string expectShape(int32_t input, Shape const& shape, Shape const& expected, char const* symbolic)
{
    bool ok = shape.size() == expected.size();
    for (size_t i = 0; ok && i < shape.size(); ++i)
    {
        ok = compatible(shape[i], expected[i]);
    }
    if (ok)
    {
        return "";
    }
    return std::string("PolyNL input ") + inputName(input) + " has shape " + formatShape(shape) + "; expected "
        + symbolic + " = " + formatShape(expected);
}

size_t alignUp(size_t bytes)
{
    constexpr size_t kAlignment = 256;
    return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

//! Appends a float32 buffer of `count` elements and returns its offset.
size_t append(size_t& cursor, int64_t count)
{
    size_t const offset = cursor;
    cursor += alignUp(static_cast<size_t>(count) * sizeof(float));
    return offset;
}

} // namespace

std::optional<Layout> parseLayout(std::string_view name)
{
    if (name == "maps")
    {
        return Layout::kMaps;
    }
    if (name == "tokens")
    {
        return Layout::kTokens;
    }
    return std::nullopt;
}

char const* layoutName(Layout layout)
{
    return layout == Layout::kMaps ? "maps" : "tokens";
}

char const* dataTypeName(DataType type)
{
    switch (type)
    {
    case DataType::kFloat32: return "float32";
    case DataType::kFloat16: return "float16";
    case DataType::kBFloat16: return "bfloat16";
    }
    return "unknown";
}

char const* inputName(int32_t index)
{
    static char const* const kNames[kNumInputs] = {"X", "Wq", "bq", "Wk", "bk", "Wv", "bv", "Wo", "bo"};
    return index >= 0 && index < kNumInputs ? kNames[index] : "?";
}

Shape outputShape(Shape const& x)
{
    return x;
}

std::string validateShapes(std::vector<Shape> const& inputs, Layout layout, Problem* problem)
{
    if (inputs.size() != static_cast<size_t>(kNumInputs))
    {
        return "PolyNL takes 9 inputs (X, Wq, bq, Wk, bk, Wv, bv, Wo, bo); got " + std::to_string(inputs.size());
    }
    Shape const& x = inputs[kX];
    size_t const rank = layout == Layout::kMaps ? 4 : 3;
    if (x.size() != rank)
    {
        return std::string("PolyNL input X has shape ") + formatShape(x) + "; layout '" + layoutName(layout)
            + "' expects " + (layout == Layout::kMaps ? "(B, C, H, W)" : "(B, N, C)");
    }
    int64_t const channels = layout == Layout::kMaps ? x[1] : x[2];
    int64_t positions = x[1];
    if (layout == Layout::kMaps)
    {
        positions = known(x[2]) && known(x[3]) ? x[2] * x[3] : kUnknown;
    }
    if (inputs[kWq].size() != 2)
    {
        return std::string("PolyNL input Wq has shape ") + formatShape(inputs[kWq]) + "; expected (C, C')";
    }
    int64_t const inner = inputs[kWq][1];
    std::string error;
    for (auto const& [input, expected, symbolic] : {
             std::tuple{kWq, Shape{channels, inner}, "(C, C')"},
             std::tuple{kBq, Shape{inner}, "(C',)"},
             std::tuple{kWk, Shape{channels, inner}, "(C, C')"},
             std::tuple{kBk, Shape{inner}, "(C',)"},
             std::tuple{kWv, Shape{channels, inner}, "(C, C')"},
             std::tuple{kBv, Shape{inner}, "(C',)"},
             std::tuple{kWo, Shape{inner, channels}, "(C', C)"},
             std::tuple{kBo, Shape{channels}, "(C,)"},
         })
    {
        error = expectShape(input, inputs[input], expected, symbolic);
        if (!error.empty())
        {
            return error;
        }
    }
    for (int32_t i = 0; i < kNumInputs; ++i)
    {
        for (int64_t extent : inputs[i])
        {
            if (known(extent) && extent < 0)
            {
                return std::string("PolyNL input ") + inputName(i) + " has a negative dimension "
                    + formatShape(inputs[i]);
            }
        }
    }
    if (known(channels) && channels == 0)
    {
        return "PolyNL needs C >= 1 channels";
    }
    if (known(inner) && inner == 0)
    {
        return "PolyNL needs an inner width C' >= 1";
    }
    if (problem != nullptr)
    {
        problem->batch = x[0];
        problem->channels = channels;
        problem->inner = inner;
        problem->positions = positions;
        problem->layout = layout;
    }
    return "";
}

std::string validateProblem(Problem const& problem)
{
    if (problem.batch < 0 || problem.positions < 0 || problem.channels < 1 || problem.inner < 1)
    {
        return "PolyNL problem needs batch >= 0, positions >= 0, C >= 1, C' >= 1; got B="
            + std::to_string(problem.batch) + " N=" + std::to_string(problem.positions)
            + " C=" + std::to_string(problem.channels) + " C'=" + std::to_string(problem.inner);
    }
    if (problem.layout != Layout::kMaps && problem.layout != Layout::kTokens)
    {
        return "PolyNL layout must be 'maps' or 'tokens'";
    }
    if (!isSupportedType(problem.xType, problem.weightType))
    {
        return std::string("PolyNL supports X/Y in float32, float16 or bfloat16 with weights of the same type or "
                           "float32; got X ")
            + dataTypeName(problem.xType) + ", weights " + dataTypeName(problem.weightType);
    }
    return "";
}

bool isSupportedType(DataType xType, DataType weightType)
{
    bool const xOk = xType == DataType::kFloat32 || xType == DataType::kFloat16 || xType == DataType::kBFloat16;
    return xOk && (weightType == xType || weightType == DataType::kFloat32);
}

bool prefersUnfolded(int64_t channels, int64_t inner)
{
    return static_cast<double>(inner) <= kUnfoldedMaxRatio * static_cast<double>(channels);
}

bool foldedCostsMore(int64_t channels, int64_t inner, int64_t positions)
{
    // den (4 N C^2 + 4 C^2 C') > num 8 N C C', divided by 4 C; in double, exact below 2^53.
    auto const c = static_cast<double>(channels);
    auto const r = static_cast<double>(inner);
    auto const n = static_cast<double>(positions);
    auto const num = static_cast<double>(kFoldedFlopsMarginNum);
    auto const den = static_cast<double>(kFoldedFlopsMarginDen);
    return den * c * (n + r) > 2.0 * num * n * r;
}

Path choosePath(int64_t channels, int64_t inner, int64_t positions)
{
    bool const fewPositions = positions != kUnknown && foldedCostsMore(channels, inner, positions);
    return prefersUnfolded(channels, inner) || fewPositions ? Path::kUnfolded : Path::kFolded;
}

WorkspaceLayout workspaceLayout(Problem const& problem, Path path)
{
    int64_t const b = problem.batch;
    int64_t const c = problem.channels;
    int64_t const r = problem.inner;
    bool const folded = path == Path::kFolded;
    WorkspaceLayout layout{};
    size_t cursor = 0;
    layout.wq = append(cursor, (c + 1) * r);
    layout.wkv = append(cursor, c * 2 * r);
    layout.bkv = append(cursor, 2 * r);
    layout.wo = append(cursor, r * c);
    layout.bo = append(cursor, c);
    layout.zeroedBegin = cursor;
    layout.means = append(cursor, b * r);
    layout.mu = append(cursor, folded ? b * c : 0);
    layout.gram = append(cursor, folded ? b * c * c : 0);
    layout.zeroedEnd = cursor;
    layout.shift = append(cursor, folded ? b * c : 0);
    layout.tokens = append(cursor, folded ? 0 : b * problem.positions * 2 * r);
    int64_t const splitElements = folded ? b * mixingSplitTerms(problem.xType) * c * c : 0;
    layout.mixingTerms = append(cursor, (splitElements + 1) / 2); // 16-bit elements, two per float
    layout.mixingExponents = append(cursor, splitElements > 0 ? b * c : 0);
    layout.total = cursor;
    return layout;
}

size_t workspaceBound(Problem const& largest, int64_t fewestPositions)
{
    Problem problem = largest;
    auto const pathAt = [&problem](int64_t n) { return choosePath(problem.channels, problem.inner, n); };
    Path const pathAtMost = pathAt(largest.positions);
    size_t bound = workspaceLayout(problem, pathAtMost).total;
    if (pathAtMost == Path::kFolded && pathAt(fewestPositions) == Path::kUnfolded)
    {
        // The unfolded path runs below some N and its workspace grows with N: size it at the largest such N.
        int64_t unfolded = fewestPositions;
        int64_t folded = largest.positions;
        while (folded - unfolded > 1)
        {
            int64_t const middle = unfolded + (folded - unfolded) / 2;
            (pathAt(middle) == Path::kUnfolded ? unfolded : folded) = middle;
        }
        problem.positions = unfolded;
        bound = std::max(bound, workspaceLayout(problem, Path::kUnfolded).total);
    }
    return bound;
}

namespace
{

//! Element offset of X[b, n, c] (n = position, c = channel) in the given layout.
size_t elementOffset(Problem const& p, int64_t b, int64_t n, int64_t c)
{
    int64_t const item = b * p.positions * p.channels;
    return static_cast<size_t>(p.layout == Layout::kMaps ? item + c * p.positions + n : item + n * p.channels + c);
}

} // namespace

void referenceForward(Problem const& p, Path path, double const* x, double const* const* weights, double* y)
{
    double const* wq = weights[0];
    double const* bq = weights[1];
    double const* wk = weights[2];
    double const* bk = weights[3];
    double const* wv = weights[4];
    double const* bv = weights[5];
    double const* wo = weights[6];
    double const* bo = weights[7];
    int64_t const nC = p.channels;
    int64_t const nR = p.inner;
    int64_t const nN = p.positions;
    std::vector<double> row(nC);
    std::vector<double> m(nR);
    std::vector<double> q(nR);
    for (int64_t b = 0; b < p.batch; ++b)
    {
        auto const readRow = [&](int64_t n) {
            for (int64_t c = 0; c < nC; ++c)
            {
                row[c] = x[elementOffset(p, b, n, c)];
            }
        };
        if (path == Path::kUnfolded)
        {
            // m = mean_n (X Wk + bk) * (X Wv + bv)
            std::fill(m.begin(), m.end(), 0.0);
            for (int64_t n = 0; n < nN; ++n)
            {
                readRow(n);
                for (int64_t j = 0; j < nR; ++j)
                {
                    double k = bk[j];
                    double v = bv[j];
                    for (int64_t c = 0; c < nC; ++c)
                    {
                        k += row[c] * wk[c * nR + j];
                        v += row[c] * wv[c * nR + j];
                    }
                    m[j] += k * v / static_cast<double>(nN);
                }
            }
            // Y = ((X Wq + bq) * m) Wo + bo + alpha X
            for (int64_t n = 0; n < nN; ++n)
            {
                readRow(n);
                for (int64_t j = 0; j < nR; ++j)
                {
                    double acc = bq[j];
                    for (int64_t c = 0; c < nC; ++c)
                    {
                        acc += row[c] * wq[c * nR + j];
                    }
                    q[j] = acc * m[j];
                }
                for (int64_t c = 0; c < nC; ++c)
                {
                    double acc = bo[c] + static_cast<double>(p.alpha) * row[c];
                    for (int64_t j = 0; j < nR; ++j)
                    {
                        acc += q[j] * wo[j * nC + c];
                    }
                    y[elementOffset(p, b, n, c)] = acc;
                }
            }
            continue;
        }
        // Folded: S = X^T X / N, mu = X^T 1 / N.
        std::vector<double> gram(nC * nC, 0.0);
        std::vector<double> mu(nC, 0.0);
        for (int64_t n = 0; n < nN; ++n)
        {
            readRow(n);
            for (int64_t i = 0; i < nC; ++i)
            {
                mu[i] += row[i] / static_cast<double>(nN);
                for (int64_t j = 0; j < nC; ++j)
                {
                    gram[i * nC + j] += row[i] * row[j] / static_cast<double>(nN);
                }
            }
        }
        // m_j = wk_j^T S wv_j + bk_j (wv_j . mu) + bv_j (wk_j . mu) + bk_j bv_j
        for (int64_t j = 0; j < nR; ++j)
        {
            double quadratic = 0;
            double muWk = 0;
            double muWv = 0;
            for (int64_t i = 0; i < nC; ++i)
            {
                double sWv = 0;
                for (int64_t k = 0; k < nC; ++k)
                {
                    sWv += gram[i * nC + k] * wv[k * nR + j];
                }
                quadratic += wk[i * nR + j] * sWv;
                muWk += mu[i] * wk[i * nR + j];
                muWv += mu[i] * wv[i * nR + j];
            }
            m[j] = quadratic + bk[j] * muWv + bv[j] * muWk + bk[j] * bv[j];
        }
        // M = alpha I + Wq diag(m) Wo; c = Wo^T (bq * m) + bo; Y = X M + 1 c^T.
        std::vector<double> mixing(nC * nC);
        std::vector<double> shift(nC);
        for (int64_t i = 0; i < nC; ++i)
        {
            for (int64_t k = 0; k < nC; ++k)
            {
                double acc = i == k ? static_cast<double>(p.alpha) : 0.0;
                for (int64_t j = 0; j < nR; ++j)
                {
                    acc += wq[i * nR + j] * m[j] * wo[j * nC + k];
                }
                mixing[i * nC + k] = acc;
            }
        }
        for (int64_t k = 0; k < nC; ++k)
        {
            double acc = bo[k];
            for (int64_t j = 0; j < nR; ++j)
            {
                acc += wo[j * nC + k] * bq[j] * m[j];
            }
            shift[k] = acc;
        }
        for (int64_t n = 0; n < nN; ++n)
        {
            readRow(n);
            for (int64_t k = 0; k < nC; ++k)
            {
                double acc = shift[k];
                for (int64_t i = 0; i < nC; ++i)
                {
                    acc += row[i] * mixing[i * nC + k];
                }
                y[elementOffset(p, b, n, k)] = acc;
            }
        }
    }
}

} // namespace polynl::core
