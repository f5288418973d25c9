/* C ABI of libpolynl_kernels: CUDA forward of one PolyNL block with plain device pointers.
 *
 *   Y = alpha * X + ((X Wq + bq) * m) Wo + bo,   m = mean_n (X Wk + bk) * (X Wv + bv)
 *
 * X and Y: float32, float16 or bfloat16 (the same type), layout maps (B, C, H, W) or tokens
 * (B, N, C), contiguous. Weights (contract order Wq, bq, Wk, bk, Wv, bv, Wo, bo; Wq/Wk/Wv are
 * (C, C'), Wo is (C', C), row-major): all of X's type or all float32. Accumulation is float32.
 * All calls are asynchronous on `stream` and thread-safe; the workspace must not be shared by
 * concurrent calls. */
#ifndef POLYNL_KERNELS_H
#define POLYNL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum PolyNLStatus
{
    POLYNL_STATUS_SUCCESS = 0,
    POLYNL_STATUS_INVALID_ARGUMENT = 1, /* bad descriptor, null pointer, unknown enum */
    POLYNL_STATUS_UNSUPPORTED = 2,      /* valid but not supported (type combination, batch too large) */
    POLYNL_STATUS_WORKSPACE_TOO_SMALL = 3,
    POLYNL_STATUS_CUDA_ERROR = 4        /* a CUDA call or kernel launch failed */
} PolyNLStatus;

typedef enum PolyNLLayout
{
    POLYNL_LAYOUT_MAPS = 0,  /* (B, C, H, W), N = H * W */
    POLYNL_LAYOUT_TOKENS = 1 /* (B, N, C) */
} PolyNLLayout;

typedef enum PolyNLDataType
{
    POLYNL_DTYPE_FLOAT32 = 0,
    POLYNL_DTYPE_FLOAT16 = 1,
    POLYNL_DTYPE_BFLOAT16 = 2
} PolyNLDataType;

typedef enum PolyNLPath
{
    POLYNL_PATH_AUTO = 0,    /* unfolded when C' <= C / 4 or when the folded path costs more than 5/4 of its
                                flops at this N (few positions), else folded */
    POLYNL_PATH_FOLDED = 1,  /* Gram form: S = X^T X / N, mu; Y = X M + 1 c^T */
    POLYNL_PATH_UNFOLDED = 2 /* K, V, m; ((X Wq + bq) * m) Wo + bo + alpha X */
} PolyNLPath;

/* One block invocation. Enum-valued fields are int32_t for a stable ABI. */
typedef struct PolyNLDesc
{
    int64_t batch;        /* B >= 0 */
    int64_t channels;     /* C >= 1 */
    int64_t inner;        /* C' >= 1 */
    int64_t positions;    /* N = H * W or the number of tokens, >= 0 */
    int32_t layout;       /* PolyNLLayout */
    int32_t x_dtype;      /* PolyNLDataType of X and Y */
    int32_t weight_dtype; /* PolyNLDataType of all weights: x_dtype or POLYNL_DTYPE_FLOAT32 */
    int32_t path;         /* PolyNLPath */
    float alpha;          /* residual scale */
} PolyNLDesc;

/* Workspace bytes polynl_forward needs for this descriptor (256-byte aligned pointer). */
PolyNLStatus polynl_workspace_size(const PolyNLDesc* desc, size_t* bytes);

/* The path polynl_forward takes for this descriptor (POLYNL_PATH_FOLDED or _UNFOLDED). */
PolyNLStatus polynl_resolve_path(const PolyNLDesc* desc, int32_t* path);

/* Enqueues the forward pass. weights: 8 device pointers in contract order. */
PolyNLStatus polynl_forward(const PolyNLDesc* desc, const void* x, const void* const* weights, void* y,
    void* workspace, size_t workspace_bytes, cudaStream_t stream);

/* Short fixed description of a status. */
const char* polynl_status_string(PolyNLStatus status);

/* Detail of the last failure on the calling thread ("" if none). */
const char* polynl_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* POLYNL_KERNELS_H */
