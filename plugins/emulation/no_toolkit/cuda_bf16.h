// Stand-in for the CUDA toolkit's cuda_bf16.h (CPU emulation without the toolkit): bfloat16 storage
// (the upper half of a float) and the conversions the kernels use. __float2bfloat16_rn rounds to
// nearest, ties to even.
#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16
{
    std::uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h)
{
    std::uint32_t const bits = static_cast<std::uint32_t>(h.bits) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
}

inline __nv_bfloat16 __float2bfloat16_rn(float value)
{
    std::uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7FFFFFFFU) > 0x7F800000U)
    {
        return {static_cast<std::uint16_t>((bits >> 16) | 0x40U)}; // quiet NaN
    }
    // Drop the low 16 bits, rounding to nearest even (overflow correctly carries into infinity).
    return {static_cast<std::uint16_t>((bits + 0x7FFFU + ((bits >> 16) & 1U)) >> 16)};
}
