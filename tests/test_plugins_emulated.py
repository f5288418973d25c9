"""The CUDA kernels (plugins/kernels/polynl_kernels.cu) run on the CPU through the CUDA emulation
(plugins/emulation), built with AddressSanitizer and UBSan where the compiler has them, against the NumPy
float64 reference: both paths and the automatic choice, both layouts, every dtype combination, sizes
across the kernels' tile and slice boundaries, exact rounding of the output, and the C ABI's error
statuses. The same source must pass tests/test_plugins_gpu.py on a GPU."""

import re
import subprocess

import numpy as np
import pytest
import torch

import numpy_reference
from emulated_kernels import (CXX, LIBRARY, NO_TOOLKIT, SANITIZE, THREAD_SANITIZE, ChildCrashed, EmulatedKernels,
                              build, sanitizer_runtime, toolkit_include_dir)
from kernel_abi import (AUTO, CUDA_ERROR, FLOAT32, FOLDED, INVALID_ARGUMENT, LAYOUT_NAMES, MAPS, PATH_NAMES, SUCCESS,
                        TOKENS, UNFOLDED, UNSUPPORTED, WORKSPACE_TOO_SMALL, Desc)
from kernel_cases import CASES, assert_close, case_id, make_inputs
from polynl_deploy import contract
from polynl_deploy.errors import KernelError
from polynl_deploy.kernels import KernelLibrary
from polynl_deploy.kernels import describe as kernel_describe
from polynl_deploy.nn import functional as F

pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++/c++) on PATH")

ASAN = sanitizer_runtime("libasan.so") if CXX else None
TSAN = sanitizer_runtime("libtsan.so") if CXX else None
ALPHA = 0.75
SMALL = (3, 13, 6, (5, 7))
LAYOUTS = pytest.mark.parametrize("layout", [MAPS, TOKENS], ids=["maps", "tokens"])
PATHS = pytest.mark.parametrize("path", [FOLDED, UNFOLDED], ids=["folded", "unfolded"])
DTYPE_PAIRS = [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.float16, torch.float32),
               (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32)]


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """Header set name -> client of the library built with it: "cuda_toolkit" (the toolkit's headers in
    host mode, where installed) and "no_toolkit" (the emulation's stand-ins)."""
    directory = tmp_path_factory.mktemp("emulated_kernels")
    header_sets = {"cuda_toolkit": toolkit_include_dir(), "no_toolkit": NO_TOOLKIT}
    header_sets = {name: headers for name, headers in header_sets.items() if headers is not None}
    build(directory, header_sets, SANITIZE if ASAN else ())
    clients = {name: EmulatedKernels(directory / name / LIBRARY, ASAN, directory / f"{name}.log")
               for name in header_sets}
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture(scope="module")
def kernels(emulated):
    return next(iter(emulated.values()))


JIT_FROM_75 = "sm90-ptx75"


@pytest.fixture(scope="module")
def by_compute_capability(emulated, tmp_path_factory):
    """Compute capability -> client of the same library on an emulated device of that capability, with
    one trace line per launch that counts its mma_sync calls."""
    default = next(iter(emulated.values()))
    directory = tmp_path_factory.mktemp("emulated_sm")
    clients = {sm: EmulatedKernels(default.library, ASAN, directory / f"sm{sm}.log",
                                   env={"CUDA_EMULATION_SM": str(sm), "CUDA_EMULATION_TRACE": "1"})
               for sm in (75, 90)}
    # An SM90 device running code JIT-compiled from compute_75 PTX (a build for sm_75 only).
    clients[JIT_FROM_75] = EmulatedKernels(default.library, ASAN, directory / "sm90-ptx75.log",
                                           env={"CUDA_EMULATION_SM": "90", "CUDA_EMULATION_PTX": "75",
                                                "CUDA_EMULATION_TRACE": "1"})
    yield clients
    for client in clients.values():
        client.close()


def host(tensor):
    """A tensor as a NumPy array for the child; bfloat16, which NumPy lacks, travels as its uint16 bits."""
    return (tensor.view(torch.uint16) if tensor.dtype == torch.bfloat16 else tensor).contiguous().numpy()


def describe(x, weights, layout, path, alpha=ALPHA):
    """The descriptor fields (kernel_abi.Desc) for X and the weights, as polynl_deploy.kernels makes them."""
    desc = kernel_describe(x, dict(zip(contract.INPUT_NAMES[1:], weights)), LAYOUT_NAMES[layout], alpha,
                           PATH_NAMES[path])
    return tuple(getattr(desc, field) for field, _ in Desc._fields_)


def forward(kernels, x, weights, layout, path, alpha=ALPHA, desc=None, **options):
    """The child's reply to polynl_forward; desc defaults to the one describing x and the weights, and a
    weight given as None is passed as a null pointer."""
    return kernels.call("forward", desc=desc or describe(x, weights, layout, path, alpha), x=host(x),
                        weights=[None if w is None else host(w) for w in weights], **options)


def run(kernels, x, weights, layout, path, alpha=ALPHA):
    """Y from the emulated kernels, as a tensor of X's dtype."""
    reply = forward(kernels, x, weights, layout, path, alpha)
    assert reply["status"] == SUCCESS, f"{reply['error']}\n{reply['log']}"
    y = torch.from_numpy(reply["y"])
    return y.view(torch.bfloat16) if x.dtype == torch.bfloat16 else y


def reference(x, weights, layout, alpha=ALPHA):
    """alpha X + ((X Wq + bq) * m) Wo + bo in float64 NumPy from the (rounded) inputs, in X's layout."""
    x64 = x.double().numpy()
    tokens = x64.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1) if layout == MAPS else x64
    y = numpy_reference.polynl(tokens, *[w.double().numpy() for w in weights], alpha=alpha, beta=1.0)
    return torch.from_numpy(y.transpose(0, 2, 1).reshape(x.shape) if layout == MAPS else y)


def check_against_reference(kernels, case, layout, path, x_dtype, weight_dtype):
    x, weights = make_inputs(case, layout, x_dtype, weight_dtype)
    assert_close(run(kernels, x, weights, layout, path).double(), reference(x, weights, layout), x_dtype)


def test_emulation_self_test(kernels):
    """The emulation's own tests: indices, shared memory, barriers, shuffles, atomics, reported misuse."""
    result = subprocess.run([str(kernels.library.parent / "test_emulation")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout


@LAYOUTS
@PATHS
@pytest.mark.parametrize("x_dtype,weight_dtype", DTYPE_PAIRS, ids=lambda d: str(d).removeprefix("torch."))
def test_every_path_layout_and_dtype(kernels, layout, path, x_dtype, weight_dtype):
    check_against_reference(kernels, SMALL, layout, path, x_dtype, weight_dtype)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@LAYOUTS
@PATHS
def test_sizes_across_tiles_and_slices(kernels, case, layout, path):
    check_against_reference(kernels, case, layout, path, torch.float32, torch.float32)


# Folded-path sizes for the tensor cores (64 x 64 tiles, 32-deep stages): C below one tile and across
# two (mirrored off-diagonal Gram tile), N odd and not a multiple of 16, batch 2, two position slices.
# SM75 only changes which kernels run: one case.
def folded_mma_per_launch(client, case, layout, x_dtype) -> tuple[list[int], str]:
    """The folded path on a traced client, checked against the reference: mma_sync calls per launch, and
    the trace."""
    x, weights = make_inputs(case, layout, x_dtype, torch.float32)
    reply = forward(client, x, weights, layout, FOLDED)
    assert reply["status"] == SUCCESS, f"{reply['error']}\n{reply['log']}"
    y = torch.from_numpy(reply["y"])
    assert_close((y.view(torch.bfloat16) if x_dtype == torch.bfloat16 else y).double(),
                 reference(x, weights, layout), x_dtype)
    return [int(n) for n in re.findall(r"launch grid .*: (\d+) mma_sync", reply["log"])], reply["log"]


TENSOR_CASES = [(90, CASES[2]), (90, CASES[3]), (90, CASES[4]), (75, CASES[2])]


@pytest.mark.parametrize("sm,case", TENSOR_CASES, ids=lambda v: f"sm{v}" if isinstance(v, int) else case_id(v))
@LAYOUTS
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_tensor_cores_by_compute_capability(by_compute_capability, sm, case, layout, x_dtype):
    """The folded path runs its Gram matrix and output GEMM on tensor cores (wmma) for float16 from SM70
    and bfloat16 from SM80, else the SIMT kernels; both within the unchanged tolerances."""
    mma_per_launch, log = folded_mma_per_launch(by_compute_capability[sm], case, layout, x_dtype)
    tensor_cores = x_dtype == torch.float16 or sm >= 80
    # staging and zeroing, Gram, m, M and c, [split of M,] output
    assert len(mma_per_launch) == (6 if tensor_cores else 5), log
    assert sum(n > 0 for n in mma_per_launch) == (2 if tensor_cores else 0), log


@LAYOUTS
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_code_compiled_for_a_lower_architecture(by_compute_capability, layout, x_dtype):
    """An SM90 GPU running PTX of compute_75 (JIT-compiled) has wmma kernels for float16 but empty ones
    for bfloat16 (nvcc compiles the bfloat16 branch away below SM80): the path follows the code that runs,
    not the device's compute capability, so bfloat16 takes the SIMT kernels and stays right."""
    mma_per_launch, log = folded_mma_per_launch(by_compute_capability[JIT_FROM_75], CASES[2], layout, x_dtype)
    assert sum(n > 0 for n in mma_per_launch) == (2 if x_dtype == torch.float16 else 0), log


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_tensor_core_operands_keep_float32_precision(kernels, x_dtype):
    """M = alpha I enters the tensor cores scaled per column by a power of two and split into terms of
    X's type. With X = 1/s, alpha = s a (a has 24 significant bits) and all other weights zero, Y = a + bo
    lies 2^-23 above or below a rounding tie of X's type: Y rounds right only if every bit of alpha
    survives, for s inside and outside float16's range."""
    mantissa_bits = {torch.float16: 10, torch.bfloat16: 7}[x_dtype]
    a = 1 + 2 ** -8 + 2 ** -16 + 2 ** -23
    tie = 1 + 2 ** -(mantissa_bits + 1)
    exact = torch.tensor([tie + 2 ** -23, tie - 2 ** -23], dtype=torch.float64)
    for scale in (1.0, 2.0 ** 20, 2.0 ** -15):
        x, weights = make_inputs((1, 2, 1, (1, 3)), TOKENS, x_dtype, torch.float32)
        x.fill_(1 / scale)
        for w in weights:
            w.zero_()
        weights[7].copy_(exact - a)
        y = run(kernels, x, weights, TOKENS, FOLDED, alpha=a * scale)
        assert torch.equal(y, exact.to(x_dtype).expand_as(y)), (scale, y)


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_tensor_core_scales_per_batch_item(by_compute_capability, x_dtype):
    """Each batch item's M gets its own column scales: item 1 is item 0 times 16, so its M (quadratic in
    X through m) is about 256 times larger and lands in other binades."""
    x, weights = make_inputs((2, 70, 9, (9, 11)), MAPS, x_dtype, torch.float32)
    x[1] = x[0] * 16
    reply = forward(by_compute_capability[90], x, weights, MAPS, FOLDED)
    assert reply["status"] == SUCCESS, f"{reply['error']}\n{reply['log']}"
    y = torch.from_numpy(reply["y"])
    assert_close((y.view(torch.bfloat16) if x_dtype == torch.bfloat16 else y).double(),
                 reference(x, weights, MAPS), x_dtype)


def test_auto_path(kernels):
    """AUTO takes the unfolded path where eager impl="auto" computes the naive form (C' <= C/4, or few
    positions N) and computes the very same Y as that path."""
    for channels, inner, positions, expected in ((64, 16, 10 ** 6, UNFOLDED), (64, 32, 127, UNFOLDED),
                                                 (64, 32, 128, FOLDED), (64, 17, 10 ** 6, UNFOLDED),
                                                 (13, 4, 10, UNFOLDED), (13, 6, 39, FOLDED), (13, 6, 38, UNFOLDED)):
        reply = kernels.call("resolve_path", desc=(1, channels, inner, positions, MAPS, FLOAT32, FLOAT32, AUTO, 1.0))
        assert (reply["status"], reply["path"]) == (SUCCESS, expected)
        assert F.prefers_naive(channels, inner, positions) == (expected == UNFOLDED)
    for case, expected in (((2, 13, 6, (5, 8)), FOLDED), (CASES[2], UNFOLDED), ((2, 13, 6, (5, 2)), UNFOLDED)):
        x, weights = make_inputs(case, TOKENS, torch.float16, torch.float32)
        assert kernels.call("resolve_path", desc=describe(x, weights, TOKENS, AUTO))["path"] == expected
        assert torch.equal(run(kernels, x, weights, TOKENS, AUTO), run(kernels, x, weights, TOKENS, expected))


def rounding_probes(dtype):
    """float32 values probing the rounding to `dtype`: in every binade from the subnormals to the largest,
    the ties above an even and an odd value and the float32 values next to them, the ties at zero and at
    the overflow threshold, and the largest float32; both signs."""
    info = torch.finfo(dtype)
    mantissa_bits = {torch.float16: 10, torch.bfloat16: 7}[dtype]
    smallest = info.smallest_normal * 2.0 ** -mantissa_bits
    largest_exponent = int(np.log2(info.max))
    ties = [smallest / 2, info.max + 2.0 ** (largest_exponent - mantissa_bits - 1)]
    for exponent in range(int(np.log2(smallest)), largest_exponent + 1):
        ulp = max(2.0 ** (exponent - mantissa_bits), smallest)
        ties += [2.0 ** exponent + ulp / 2, 2.0 ** exponent + 1.5 * ulp]
    ties = np.array(ties, np.float32)
    values = np.concatenate([ties, np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(np.inf)),
                             [np.finfo(np.float32).max]])
    return np.concatenate([values, -values]).astype(np.float32)


@pytest.mark.parametrize("headers", ["cuda_toolkit", "no_toolkit"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_output_rounds_to_nearest_even(emulated, headers, dtype):
    """Bit-exact rounding of Y to float16/bfloat16, as torch (and CUDA) round. With X = 0, all weights 0
    except bo (float32), Y = bo rounded once; one channel per probe value (unfolded path)."""
    if headers not in emulated:
        pytest.skip("no CUDA toolkit headers on this machine")
    probes = torch.from_numpy(rounding_probes(dtype))
    channels = probes.numel()
    case = (1, channels, 1, (1, 1))
    x, weights = make_inputs(case, TOKENS, dtype, torch.float32)
    x.zero_()
    for w in weights:
        w.zero_()
    weights[7].copy_(probes)
    y = run(emulated[headers], x, weights, TOKENS, UNFOLDED, alpha=1.0)
    assert torch.equal(y.view(torch.int16).flatten(), probes.to(dtype).view(torch.int16))


@pytest.mark.parametrize("x_dtype,weight_dtype", DTYPE_PAIRS[1::2], ids=["float16", "bfloat16"])
def test_without_cuda_toolkit_headers(emulated, x_dtype, weight_dtype):
    """The emulation's stand-ins for the toolkit's headers run the kernels as well."""
    for path in (FOLDED, UNFOLDED):
        check_against_reference(emulated["no_toolkit"], SMALL, MAPS, path, x_dtype, weight_dtype)


def test_error_statuses(kernels):
    x, weights = make_inputs((2, 8, 4, (3, 3)), MAPS, torch.float16, torch.float16)
    desc = describe(x, weights, MAPS, AUTO)

    def status(**options):
        reply = forward(kernels, x, weights, MAPS, AUTO, **options)
        return reply["status"], reply["error"]

    def with_fields(**fields):
        return tuple(fields.get(name, value) for (name, _), value in zip(Desc._fields_, desc))

    assert status() == (SUCCESS, "")
    for empty in ({"batch": 0}, {"positions": 0}):  # Y is empty: nothing is read or written
        assert status(desc=with_fields(**empty), null=("x", "weights", "y", "workspace")) == (SUCCESS, "")
    for bad in ({"layout": 2}, {"x_dtype": 3}, {"weight_dtype": -1}, {"path": 3}):
        assert status(desc=with_fields(**bad)) == (INVALID_ARGUMENT, "desc has an unknown layout, dtype or path value")
    code, message = status(desc=with_fields(channels=0))
    assert code == INVALID_ARGUMENT and "C=0" in message
    code, message = status(desc=with_fields(weight_dtype=2))  # float16 X with bfloat16 weights
    assert code == UNSUPPORTED and "weights" in message
    assert status(desc=with_fields(batch=65536)) == (UNSUPPORTED, "batch and C' must be <= 65535")
    null_pointers = (INVALID_ARGUMENT, "x, weights, y and workspace must not be null")
    for name in ("x", "weights", "y", "workspace"):
        assert status(null=(name,)) == null_pointers
    missing_wk = [*weights]
    missing_wk[2] = None
    reply = forward(kernels, x, missing_wk, MAPS, AUTO, desc=desc)
    assert (reply["status"], reply["error"]) == (INVALID_ARGUMENT, "weight Wk is null")
    code, message = status(workspace_shortfall=1)
    assert code == WORKSPACE_TOO_SMALL and "workspace has" in message
    assert status(workspace_offset=128) == (INVALID_ARGUMENT, "workspace must be 256-byte aligned")
    assert kernels.call("forward", desc=None, x=host(x), weights=[host(w) for w in weights])["error"] == "desc is null"
    for operation in ("workspace_size", "resolve_path"):
        reply = kernels.call(operation, desc=desc, null_result=True)
        assert reply["status"] == INVALID_ARGUMENT and "is null" in reply["error"]
    assert kernels.call("status_string", status=CUDA_ERROR)["text"] == "CUDA error"


def test_sanitizers_catch_out_of_bounds_reads(kernels):
    """The sanitizers are live: X one position shorter than the descriptor says is read past its end."""
    if ASAN is None:
        pytest.skip("the compiler has no libasan.so: the emulated kernels run without AddressSanitizer")
    x, weights = make_inputs(SMALL, TOKENS, torch.float32, torch.float32)
    with pytest.raises(ChildCrashed, match="heap-buffer-overflow"):
        forward(kernels, x[:, :-1], weights, TOKENS, FOLDED, desc=describe(x, weights, TOKENS, FOLDED))


def test_library_binding_runs_the_emulated_kernels(tmp_path):
    """polynl_deploy.kernels, the binding the benchmark uses (prepare once, call again), on a build without
    sanitizers loaded into this process: descriptor from tensors, aligned workspace, output buffer reuse."""
    build(tmp_path, {"plain": toolkit_include_dir() or NO_TOOLKIT})
    library = KernelLibrary(tmp_path / "plain" / LIBRARY)
    for layout, name in ((MAPS, "maps"), (TOKENS, "tokens")):
        x, weights = make_inputs(CASES[2], layout, torch.float16, torch.float32)
        named = dict(zip(contract.INPUT_NAMES[1:], weights))
        assert library.resolve_path(kernel_describe(x, named, name, ALPHA, "auto")) == "unfolded"
        call = library.prepare(x, named, name, ALPHA)
        expected = reference(x, weights, layout)
        first = call().clone()
        assert_close(first.double(), expected, torch.float16)
        assert torch.equal(call(), first)  # one thread per block at a time: sums in a fixed order
    with pytest.raises(KernelError, match=r"unsupported \(batch and C' must be <= 65535\)") as caught:
        library.workspace_size(Desc(65536, 8, 4, 9, MAPS, FLOAT32, FLOAT32, AUTO, 1.0))
    assert caught.value.status == UNSUPPORTED


@pytest.mark.skipif(TSAN is None, reason="the host compiler has no ThreadSanitizer runtime (libtsan.so)")
def test_thread_sanitizer_sees_no_race_between_the_threads_of_a_block(tmp_path):
    """A block's threads are OS threads in the emulation, so ThreadSanitizer reports a shared-memory write
    and read that no __syncthreads separates, also where the result comes out right anyway (shared memory
    keeps the previous block's values): every kernel of both paths, SIMT and tensor cores, both layouts."""
    build(tmp_path, {"tsan": toolkit_include_dir() or NO_TOOLKIT}, THREAD_SANITIZE)
    client = EmulatedKernels(tmp_path / "tsan" / LIBRARY, TSAN, tmp_path / "tsan.log",
                             env={"TSAN_OPTIONS": "halt_on_error=1 exitcode=66"})
    runs = [(FOLDED, torch.float16), (FOLDED, torch.bfloat16), (FOLDED, torch.float32), (UNFOLDED, torch.float16)]
    try:
        for layout in (MAPS, TOKENS):
            for path, x_dtype in runs:
                x, weights = make_inputs(CASES[2], layout, x_dtype, torch.float32)
                try:
                    reply = forward(client, x, weights, layout, path)
                except ChildCrashed as crash:
                    pytest.fail(f"{PATH_NAMES[path]}, {LAYOUT_NAMES[layout]}, {x_dtype}: {crash}")
                assert reply["status"] == SUCCESS, f"{reply['error']}\n{reply['log']}"
                assert "ThreadSanitizer" not in reply["log"], reply["log"]
    finally:
        client.close()
