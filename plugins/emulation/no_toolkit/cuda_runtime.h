// Stand-in for the CUDA toolkit's cuda_runtime.h (CPU emulation without the toolkit).
#pragma once

#include "cuda_runtime_api.h"
