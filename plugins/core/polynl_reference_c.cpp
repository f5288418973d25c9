// C ABI over the functional core (see include/polynl_reference.h).
#include "polynl_reference.h"

#include "polynl_core.h"

#include <string>

using namespace polynl::core;

namespace
{

thread_local std::string lastError;

int32_t fail(std::string message)
{
    lastError = std::move(message);
    return 1;
}

} // namespace

extern "C" int32_t polynl_reference_forward(int64_t batch, int64_t channels, int64_t inner, int64_t positions,
    int32_t layout, int32_t path, float alpha, double const* x, double const* const* weights, double* y)
{
    if (layout != 0 && layout != 1)
    {
        return fail("layout must be 0 (maps) or 1 (tokens)");
    }
    if (path != 0 && path != 1)
    {
        return fail("path must be 0 (folded) or 1 (unfolded)");
    }
    Problem problem;
    problem.batch = batch;
    problem.channels = channels;
    problem.inner = inner;
    problem.positions = positions;
    problem.layout = static_cast<Layout>(layout);
    problem.alpha = alpha;
    std::string error = validateProblem(problem);
    if (!error.empty())
    {
        return fail(error);
    }
    referenceForward(problem, static_cast<Path>(path), x, weights, y);
    return 0;
}

extern "C" int32_t polynl_reference_choose_path(int64_t channels, int64_t inner, int64_t positions)
{
    return static_cast<int32_t>(choosePath(channels, inner, positions));
}

extern "C" int32_t polynl_reference_validate_shapes(int32_t const* ranks, int64_t const* dims, int32_t layout)
{
    if (layout != 0 && layout != 1)
    {
        return fail("layout must be 0 (maps) or 1 (tokens)");
    }
    std::vector<Shape> shapes(kNumInputs);
    for (int32_t i = 0; i < kNumInputs; ++i)
    {
        shapes[i].assign(dims, dims + ranks[i]);
        dims += ranks[i];
    }
    std::string error = validateShapes(shapes, static_cast<Layout>(layout), nullptr);
    return error.empty() ? 0 : fail(error);
}

extern "C" char const* polynl_reference_last_error(void)
{
    return lastError.c_str();
}
