"""TensorRTRunner: a serialized engine behind the Runner interface, run on a CUDA stream with torch tensors.

Engines built for target ``rtx`` (see the ``<plan>.json`` sidecar) are deserialized with TensorRT for RTX,
the others with full TensorRT after loading the PolyNL plugin library.
"""

import logging
from pathlib import Path

import numpy as np
import onnx

from polynl_deploy import features
from polynl_deploy.backends.base import Runner, TensorSpec
from polynl_deploy.errors import BackendUnavailableError, InputError, ModelFileError
from polynl_deploy.io import require_file, sha256_of
from polynl_deploy.tensorrt.builder import import_tensorrt, load_plugin_library, read_sidecar
from polynl_deploy.tensorrt.precision import TARGET_TYPES

log = logging.getLogger(__name__)

_NUMPY_TYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
                "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}


class TensorRTRunner(Runner):
    name = "trt"

    def __init__(self, plan_path, plugin_library=None) -> None:
        import torch

        self.path = require_file(plan_path, ModelFileError, "engine file")
        self.model_label = str(self.path)
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"{self.path}: running a TensorRT engine needs a CUDA GPU")
        self.sidecar = read_sidecar(self.path)
        converted = TARGET_TYPES.get(self.sidecar.get("precision", "fp32"))  # the arithmetic's type, if not fp32
        self.precision = None if converted is None else onnx.helper.tensor_dtype_to_np_dtype(converted).name
        self.trt = trt = import_tensorrt(self.sidecar.get("target", "trt"))
        # A version-compatible plan carries its plugin library and loads it itself.
        if self.sidecar.get("target", "trt") == "trt" and not self.sidecar.get("plugin_library_serialized"):
            library = plugin_library or self._recorded_plugin_library() or features.detect().plugin_library
            if library:
                load_plugin_library(trt, Path(library))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.sidecar.get("version_compatible") or self.sidecar.get("plugin_library_serialized"):
            # Host code from a plan this toolkit built (see the sidecar): its lean runtime, its plugin library.
            self._runtime.engine_host_code_allowed = True
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelFileError(f"{self.path}: TensorRT {trt.__version__} cannot deserialize it (built with another "
                                 "version, for another GPU, or without the plugin library loaded?)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError(f"{self.path}: TensorRT cannot create an execution context "
                                          "(out of GPU memory?)")
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if any(self.engine.get_tensor_dtype(n).name == "BF16" for n in names):
            raise ModelFileError(f"{self.path}: bfloat16 engine inputs/outputs cannot be fed from numpy; "
                                 "rebuild with --keep-io-fp32")
        specs = [TensorSpec(n, self._dtype(n), tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(n)))
                 for n in names]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_specs = [s for s in specs if is_input[s.name]]
        self.output_specs = [s for s in specs if not is_input[s.name]]
        self.output_names = [s.name for s in self.output_specs]

    def _recorded_plugin_library(self) -> str | None:
        """The plugin library the sidecar names, where that file is on this machine (warning if it changed)."""
        recorded = self.sidecar.get("plugin_library")
        if not recorded or not Path(recorded).is_file():
            return None
        digest = self.sidecar.get("plugin_library_sha256")
        if digest and sha256_of(recorded) != digest:
            log.warning("%s: plugin library %s changed since the engine was built", self.path, recorded)
        return recorded

    def _set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(name, shape):
            low, _opt, high = self.engine.get_tensor_profile_shape(name, 0)
            raise InputError(f"{self.path}: input {name!r} of shape {list(shape)} is outside the engine's "
                             f"optimization profile (min {list(low)}, max {list(high)})")

    def _dtype(self, name: str) -> str:
        return _NUMPY_TYPES[self.engine.get_tensor_dtype(name).name]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.cuda.stream(self.stream):
            keep_alive = []
            for spec in self.input_specs:
                tensor = torch.from_numpy(feed[spec.name]).to("cuda", non_blocking=True)
                keep_alive.append(tensor)
                self._set_input_shape(spec.name, tuple(tensor.shape))
                self.context.set_tensor_address(spec.name, tensor.data_ptr())
            unresolved = self.context.infer_shapes()
            if unresolved:
                raise InputError(f"{self.path}: TensorRT cannot infer the output shapes; inputs {unresolved} "
                                 "are not fully set")
            outputs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = getattr(torch, self._dtype(name))
                outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ModelFileError(f"{self.path}: TensorRT execution failed for shapes "
                                     f"{ {k: v.shape for k, v in feed.items()} }")
        self.stream.synchronize()
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}
