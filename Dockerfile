# polynl-deploy images.
#
#   GPU (default target): TensorRT, the PolyNL kernel and plugin libraries, ONNX Runtime with CUDA
#     docker build --build-arg TRT_TAG=25.10 -t polynl-deploy .
#     docker run --rm --gpus all -p 8000:8000 -v "$PWD/models:/models:ro" polynl-deploy
#   CPU only (no GPU needed): ONNX Runtime CPU and the CPU wheel of torch
#     docker build --target cpu -t polynl-deploy:cpu .
#     docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" polynl-deploy:cpu
#
# The entrypoint is the `polynl` CLI; the default command serves /models/model.onnx over the
# Open Inference Protocol (KServe v2) on port 8000. Any other command works too, e.g.
#     docker run --rm --gpus all -v "$PWD:/work" polynl-deploy build /work/model.onnx -o /work/model.plan
# and a TensorRT engine is served with `serve /models/model.plan`.

# One CUDA major throughout the GPU image: the TensorRT container (25.10: CUDA 13.0), torch from PyPI
# (its default wheels are CUDA 13 builds) and onnxruntime-gpu (1.31: CUDA 13). A CUDA 12 container
# would need torch and onnxruntime-gpu builds for CUDA 12 as well.
ARG TRT_TAG=25.10
ARG PYTHON_TAG=3.11-slim-bookworm
ARG TORCH_VERSION=2.13.0
ARG POLYNL_VERSION=0.1.0
ARG CMAKE_VERSION=3.31.6
ARG ORT_GPU_VERSION=1.31.1

# --- the Python package as a wheel (pure Python: the same wheel serves both images) ----------
FROM python:${PYTHON_TAG} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY polynl_deploy/ polynl_deploy/
COPY cli/ cli/
COPY models/ models/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- CUDA kernel library and TensorRT plugin, compiled against the image's CUDA and TensorRT ---
FROM nvcr.io/nvidia/tensorrt:${TRT_TAG}-py3 AS plugins
ARG CMAKE_VERSION
ENV PIP_BREAK_SYSTEM_PACKAGES=1
RUN pip install --no-cache-dir "cmake==${CMAKE_VERSION}"
WORKDIR /src
COPY plugins/ plugins/
RUN cmake -S plugins -B build/plugins -DCMAKE_BUILD_TYPE=Release -DPOLYNL_BUILD_TESTS=OFF \
    && cmake --build build/plugins --parallel "$(nproc)" \
    && mkdir -p /opt/polynl/lib \
    && cp build/plugins/libpolynl_kernels.so build/plugins/libpolynl_trt_plugin.so \
          build/plugins/libpolynl_trt_plugin_preload.so /opt/polynl/lib/

# --- CPU-only runtime ------------------------------------------------------------------------
FROM python:${PYTHON_TAG} AS cpu
ARG TORCH_VERSION
ARG POLYNL_VERSION
ENV PYTHONUNBUFFERED=1
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
COPY --from=wheel /wheels/ /wheels/
# The package from its own wheel file only (a lookup by name with --find-links asks PyPI too).
RUN pip install --no-cache-dir "polynl-deploy[serve] @ file:///wheels/polynl_deploy-${POLYNL_VERSION}-py3-none-any.whl" \
    && useradd --create-home --uid 1001 polynl
USER 1001
WORKDIR /models
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
ENTRYPOINT ["polynl"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "/models/model.onnx"]

# --- GPU runtime (default target) ------------------------------------------------------------
FROM nvcr.io/nvidia/tensorrt:${TRT_TAG}-py3 AS runtime
ARG POLYNL_VERSION
ARG ORT_GPU_VERSION
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONUNBUFFERED=1 \
    POLYNL_PLUGIN_LIBRARY=/opt/polynl/lib/libpolynl_trt_plugin.so \
    POLYNL_KERNELS_LIBRARY=/opt/polynl/lib/libpolynl_kernels.so
COPY --from=plugins /opt/polynl/lib/ /opt/polynl/lib/
COPY --from=wheel /wheels/ /wheels/
# onnxruntime (a base dependency) and onnxruntime-gpu share one import name: keep only the GPU build.
RUN pip install --no-cache-dir "polynl-deploy[serve] @ file:///wheels/polynl_deploy-${POLYNL_VERSION}-py3-none-any.whl" \
    && pip uninstall --yes onnxruntime \
    && pip install --no-cache-dir "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && useradd --create-home --uid 1001 polynl
USER 1001
WORKDIR /models
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=60s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
ENTRYPOINT ["polynl"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "/models/model.onnx"]
