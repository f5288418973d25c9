"""Short names for the kernel C ABI's enum values in the kernel tests; the binding itself is
polynl_deploy.kernels (no torch at import, so the sanitized child of emulated_kernels.py uses it too)."""

from polynl_deploy.kernels import DTYPES, LAYOUTS, PATHS, STATUSES, WORKSPACE_ALIGNMENT  # noqa: F401
from polynl_deploy.kernels import KernelDesc as Desc  # noqa: F401
from polynl_deploy.kernels import load_abi as load  # noqa: F401

SUCCESS, INVALID_ARGUMENT, UNSUPPORTED, WORKSPACE_TOO_SMALL, CUDA_ERROR = (
    STATUSES[name] for name in ("success", "invalid_argument", "unsupported", "workspace_too_small", "cuda_error"))
AUTO, FOLDED, UNFOLDED = (PATHS[name] for name in ("auto", "folded", "unfolded"))
MAPS, TOKENS = LAYOUTS["maps"], LAYOUTS["tokens"]
FLOAT32 = DTYPES["float32"]
LAYOUT_NAMES = {code: name for name, code in LAYOUTS.items()}
PATH_NAMES = {code: name for name, code in PATHS.items()}
