// CHECK for the native tests (no framework): a failed check is printed and counted, and the test's
// main returns non-zero when polynl::testing::failures is not 0.
#ifndef POLYNL_TESTING_CHECK_H
#define POLYNL_TESTING_CHECK_H

#include <cstdio>

namespace polynl::testing
{
inline int checks = 0;
inline int failures = 0;
} // namespace polynl::testing

#define CHECK(condition)                                                                                               \
    do                                                                                                                 \
    {                                                                                                                  \
        ++polynl::testing::checks;                                                                                     \
        if (!(condition))                                                                                              \
        {                                                                                                              \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #condition);                         \
            ++polynl::testing::failures;                                                                               \
        }                                                                                                              \
    } while (0)

#endif // POLYNL_TESTING_CHECK_H
