// Unit tests of the functional core (shape rules, types, path choice, workspace, CPU reference).
// Plain C++17, no framework: exits non-zero on the first failed check.
#include "check.h"
#include "polynl_core.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <utility>

using namespace polynl::core;

namespace
{

using polynl::testing::failures;

bool contains(std::string const& text, char const* part)
{
    return text.find(part) != std::string::npos;
}

std::vector<Shape> shapesFor(Shape x, int64_t c, int64_t r)
{
    return {x, {c, r}, {r}, {c, r}, {r}, {c, r}, {r}, {r, c}, {c}};
}

void testShapes()
{
    Problem p;
    CHECK(validateShapes(shapesFor({2, 12, 5, 3}, 12, 6), Layout::kMaps, &p).empty());
    CHECK(p.batch == 2 && p.channels == 12 && p.inner == 6 && p.positions == 15);
    CHECK(validateShapes(shapesFor({3, 7, 10}, 10, 2), Layout::kTokens, &p).empty());
    CHECK(p.batch == 3 && p.channels == 10 && p.inner == 2 && p.positions == 7);
    CHECK(outputShape({2, 12, 5, 3}) == (Shape{2, 12, 5, 3}));

    // Dynamic batch and spatial extents are accepted and reported as unknown.
    CHECK(validateShapes(shapesFor({kUnknown, 12, kUnknown, 4}, 12, 6), Layout::kMaps, &p).empty());
    CHECK(p.batch == kUnknown && p.positions == kUnknown);

    std::string error = validateShapes(shapesFor({2, 12, 5}, 12, 6), Layout::kMaps, nullptr);
    CHECK(contains(error, "(B, C, H, W)"));
    error = validateShapes(shapesFor({2, 5, 12}, 12, 6), Layout::kMaps, nullptr);
    CHECK(contains(error, "(B, C, H, W)"));

    auto shapes = shapesFor({2, 5, 12}, 12, 6);
    shapes[kWk] = {12, 5};
    error = validateShapes(shapes, Layout::kTokens, nullptr);
    CHECK(contains(error, "Wk") && contains(error, "(12, 5)") && contains(error, "(C, C') = (12, 6)"));

    shapes = shapesFor({2, 5, 12}, 12, 6);
    shapes[kWo] = {12, 6};
    error = validateShapes(shapes, Layout::kTokens, nullptr);
    CHECK(contains(error, "Wo") && contains(error, "(C', C)"));

    shapes = shapesFor({2, 5, 12}, 12, 6);
    shapes[kBo] = {6};
    CHECK(contains(validateShapes(shapes, Layout::kTokens, nullptr), "bo"));

    shapes = shapesFor({2, 5, 12}, 11, 6); // weights for C = 11, X has C = 12
    CHECK(contains(validateShapes(shapes, Layout::kTokens, nullptr), "Wq"));

    shapes.pop_back();
    CHECK(contains(validateShapes(shapes, Layout::kTokens, nullptr), "9 inputs"));

    CHECK(parseLayout("maps") == Layout::kMaps);
    CHECK(parseLayout("tokens") == Layout::kTokens);
    CHECK(!parseLayout("nchw").has_value());
}

void testTypesAndPath()
{
    CHECK(isSupportedType(DataType::kFloat32, DataType::kFloat32));
    CHECK(isSupportedType(DataType::kFloat16, DataType::kFloat16));
    CHECK(isSupportedType(DataType::kFloat16, DataType::kFloat32));
    CHECK(isSupportedType(DataType::kBFloat16, DataType::kFloat32));
    CHECK(!isSupportedType(DataType::kFloat16, DataType::kBFloat16));
    CHECK(!isSupportedType(DataType::kFloat32, DataType::kFloat16));

    // Threshold C' <= C / 4, as polynl_deploy.defaults.UNFOLDED_MAX_RATIO, at any N.
    CHECK(choosePath(64, 16, kUnknown) == Path::kUnfolded);
    CHECK(choosePath(64, 17, kUnknown) == Path::kFolded);
    CHECK(choosePath(64, 32, kUnknown) == Path::kFolded);
    CHECK(choosePath(10, 2, kUnknown) == Path::kUnfolded);
    CHECK(choosePath(10, 3, kUnknown) == Path::kFolded);
    CHECK(choosePath(64, 16, 1 << 20) == Path::kUnfolded);
    // C' = C/2: the folded path costs more than 5/4 of the unfolded path's flops exactly when N < 2C.
    CHECK(choosePath(1024, 512, 2047) == Path::kUnfolded);
    CHECK(choosePath(1024, 512, 2048) == Path::kFolded);
    CHECK(choosePath(64, 32, 127) == Path::kUnfolded && choosePath(64, 32, 128) == Path::kFolded);
    // C' = 0.3 C: never worth the Gram matrix by this measure.
    CHECK(choosePath(100, 30, 1 << 30) == Path::kUnfolded);
    CHECK(foldedCostsMore(1024, 512, 2047) && !foldedCostsMore(1024, 512, 2048));
}

void testWorkspace()
{
    Problem p;
    p.batch = 3;
    p.channels = 10;
    p.inner = 3;
    p.positions = 17;
    WorkspaceLayout const folded = workspaceLayout(p, Path::kFolded);
    WorkspaceLayout const unfolded = workspaceLayout(p, Path::kUnfolded);
    for (WorkspaceLayout const& w : {folded, unfolded})
    {
        for (size_t offset : {w.wq, w.wkv, w.bkv, w.wo, w.bo, w.means, w.mu, w.gram, w.shift, w.tokens,
                 w.mixingTerms, w.mixingExponents})
        {
            CHECK(offset % 256 == 0 && offset <= w.total);
        }
        CHECK(w.zeroedBegin == w.means && w.zeroedEnd >= w.zeroedBegin);
        CHECK(w.wkv - w.wq >= (10 + 1) * 3 * sizeof(float)); // Wq and bq as its last row
    }
    CHECK(folded.zeroedEnd - folded.gram >= 3 * 10 * 10 * sizeof(float));
    CHECK(folded.shift + 3 * 10 * sizeof(float) <= folded.total);
    CHECK(unfolded.tokens + 3 * 17 * 2 * 3 * sizeof(float) <= unfolded.total);
    CHECK(unfolded.gram == unfolded.zeroedEnd); // no Gram buffer on the unfolded path
    CHECK(folded.mixingTerms == folded.total && unfolded.mixingTerms == unfolded.total); // float32 X: no split

    // 16-bit X on the folded path: (B, terms, C, C) 16-bit terms of M and (B, C) int32 exponents.
    for (auto [type, terms] : {std::pair{DataType::kFloat16, 2}, std::pair{DataType::kBFloat16, 3}})
    {
        p.xType = type;
        WorkspaceLayout const split = workspaceLayout(p, Path::kFolded);
        CHECK(split.mixingTerms % 256 == 0 && split.mixingExponents % 256 == 0);
        CHECK(split.mixingExponents - split.mixingTerms >= size_t{3} * terms * 10 * 10 * 2);
        CHECK(split.total - split.mixingExponents >= 3 * 10 * sizeof(int32_t));
        CHECK(split.mixingTerms >= split.shift + 3 * 10 * sizeof(float));
        CHECK(workspaceLayout(p, Path::kUnfolded).total == unfolded.total);
    }
}

//! workspaceBound equals the largest workspace over every N of the range, each on its own path.
void testWorkspaceBound()
{
    for (auto [channels, inner] : {std::pair{64, 32}, std::pair{64, 16}, std::pair{100, 30}, std::pair{48, 40}})
    {
        for (auto [fewest, most] : {std::pair{1, 1000}, std::pair{1, 100}, std::pair{200, 1000}, std::pair{127, 128},
                 std::pair{0, 127}, std::pair{5, 5}})
        {
            for (DataType type : {DataType::kFloat32, DataType::kFloat16})
            {
                Problem p;
                p.batch = 2;
                p.channels = channels;
                p.inner = inner;
                p.xType = type;
                size_t largest = 0;
                for (int64_t n = fewest; n <= most; ++n)
                {
                    p.positions = n;
                    largest = std::max(largest, workspaceLayout(p, choosePath(channels, inner, n)).total);
                }
                p.positions = most;
                CHECK(workspaceBound(p, fewest) == largest);
            }
        }
    }
}

//! Folded and unfolded references agree to round-off in double, with biases and alpha.
void testReferenceForms(Layout layout)
{
    Problem p;
    p.batch = 2;
    p.channels = 9;
    p.inner = 4;
    p.positions = 13;
    p.layout = layout;
    p.alpha = 0.75F;
    std::mt19937 rng(7);
    std::normal_distribution<double> normal;
    auto random = [&](size_t n) {
        std::vector<double> v(n);
        for (double& e : v)
        {
            e = normal(rng);
        }
        return v;
    };
    int64_t const c = p.channels;
    int64_t const r = p.inner;
    std::vector<double> x = random(p.batch * p.positions * c);
    std::vector<std::vector<double>> w = {
        random(c * r), random(r), random(c * r), random(r), random(c * r), random(r), random(r * c), random(c)};
    double const* weights[8];
    for (int i = 0; i < 8; ++i)
    {
        weights[i] = w[i].data();
    }
    std::vector<double> yFolded(x.size());
    std::vector<double> yUnfolded(x.size());
    referenceForward(p, Path::kFolded, x.data(), weights, yFolded.data());
    referenceForward(p, Path::kUnfolded, x.data(), weights, yUnfolded.data());
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i)
    {
        worst = std::max(worst, std::fabs(yFolded[i] - yUnfolded[i]) / (1.0 + std::fabs(yUnfolded[i])));
    }
    CHECK(worst < 1e-11);

    // With zero weights the block is alpha * X.
    for (auto& v : w)
    {
        std::fill(v.begin(), v.end(), 0.0);
    }
    referenceForward(p, Path::kFolded, x.data(), weights, yFolded.data());
    CHECK(std::fabs(yFolded[5] - 0.75 * x[5]) < 1e-15);
}

} // namespace

int main()
{
    testShapes();
    testTypesAndPath();
    testWorkspace();
    testWorkspaceBound();
    testReferenceForms(Layout::kMaps);
    testReferenceForms(Layout::kTokens);
    if (failures != 0)
    {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return EXIT_FAILURE;
    }
    std::printf("test_polynl_core: all checks passed\n");
    return EXIT_SUCCESS;
}
