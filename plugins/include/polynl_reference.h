/* C ABI of the functional core's CPU reference (libpolynl_reference), for ctypes tests.
 * No CUDA and no TensorRT. */
#ifndef POLYNL_REFERENCE_H
#define POLYNL_REFERENCE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Block forward in float64. layout: 0 maps (B, C, H*W), 1 tokens (B, N, C).
 * path: 0 folded (Gram form), 1 unfolded (paper order). weights: Wq, bq, Wk, bk, Wv, bv, Wo, bo.
 * Returns 0 on success, 1 on invalid arguments (message in polynl_reference_last_error). */
int32_t polynl_reference_forward(int64_t batch, int64_t channels, int64_t inner, int64_t positions, int32_t layout,
    int32_t path, float alpha, const double* x, const double* const* weights, double* y);

/* 1 when the kernels take the unfolded path for these widths (C' <= C / 4), else 0. */
int32_t polynl_reference_prefers_unfolded(int64_t channels, int64_t inner);

/* Validates shapes given as a flat array: ranks[9], then all dims in input order.
 * Returns 0 when valid; otherwise 1 and the message in polynl_reference_last_error. */
int32_t polynl_reference_validate_shapes(const int32_t* ranks, const int64_t* dims, int32_t layout);

const char* polynl_reference_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* POLYNL_REFERENCE_H */
