// Stand-in for the CUDA toolkit's cuda_fp16.h (CPU emulation without the toolkit): IEEE binary16
// storage and the conversions the kernels use. __float2half_rn rounds to nearest, ties to even.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __half
{
    std::uint16_t bits;
};

inline float __half2float(__half h)
{
    std::uint32_t const sign = (h.bits & 0x8000U) << 16;
    std::uint32_t const exponent = (h.bits >> 10) & 0x1FU;
    std::uint32_t const mantissa = h.bits & 0x3FFU;
    if (exponent == 0)
    {
        float const magnitude = static_cast<float>(mantissa) * 0x1p-24F; // zero or subnormal: exact
        return sign != 0 ? -magnitude : magnitude;
    }
    // Normal numbers re-biased (15 -> 127), infinities and NaNs to the all-ones float exponent.
    std::uint32_t const bits = sign | (exponent == 0x1F ? 0xFFU << 23 : (exponent + 112) << 23) | mantissa << 13;
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

inline __half __float2half_rn(float value)
{
    std::uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    auto const sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000U);
    std::uint32_t const magnitude = bits & 0x7FFFFFFFU;
    if (magnitude > 0x7F800000U)
    {
        return {static_cast<std::uint16_t>(sign | 0x7E00U)}; // quiet NaN
    }
    if (magnitude >= 0x477FF000U) // 65520 and above round to infinity
    {
        return {static_cast<std::uint16_t>(sign | 0x7C00U)};
    }
    if (magnitude < 0x38800000U) // below 2^-14: a multiple of 2^-24 (scaling by 2^24 is exact)
    {
        auto const units = static_cast<std::uint16_t>(std::nearbyint(std::fabs(value) * 0x1p24F));
        return {static_cast<std::uint16_t>(sign | units)};
    }
    // Re-bias the exponent (127 -> 15) and drop 13 mantissa bits, rounding to nearest even; a carry
    // out of the mantissa correctly increments the exponent.
    std::uint32_t const rounded = magnitude + 0xFFFU + ((magnitude >> 13) & 1U);
    return {static_cast<std::uint16_t>(sign | ((rounded - 0x38000000U) >> 13))};
}
