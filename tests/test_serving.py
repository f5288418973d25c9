"""The Open Inference Protocol server, run as a user runs it (a subprocess on 127.0.0.1) and driven by
Triton's own HTTP client: metadata, numerics vs eager, binary tensors, bad input, load, fuzzing, shutdown."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
httpclient = pytest.importorskip("tritonclient.http")
schemathesis = pytest.importorskip("schemathesis")
import hypothesis  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import fixture_models  # noqa: E402
from conftest import TESTS  # noqa: E402
from polynl_deploy.defaults import TOLERANCES  # noqa: E402

MAX_BODY_MB = 1
OUTPUTS = ("output_0", "output_1")
SERVER_COMMAND = "import typer; from polynl_cli.serve import serve; typer.run(serve)"


class TwoOutputs(torch.nn.Module):
    """TwoBlockNet plus a second output (channel sum), for output selection."""

    def __init__(self) -> None:
        super().__init__()
        self.net = fixture_models.two_block_net()

    def forward(self, x):
        y = self.net(x)
        return y, y.sum(dim=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (ONNX file, eager model): an FP32 model with two outputs and an FP16 token model."""
    from polynl_deploy import export_onnx

    folder = tmp_path_factory.mktemp("serving")
    fp32 = TwoOutputs().eval()
    export_onnx(fp32, torch.randn(2, 3, 10, 14), folder / "twoblock.onnx")
    fp16 = fixture_models.token_net().half()
    export_onnx(fp16, torch.randn(2, 9, 10).half(), folder / "tokens16.onnx")
    scaled = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Mul", ["x", "s"], ["y"])], "scaled",
        [onnx.helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, []),
         onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])]),
        opset_imports=[onnx.helper.make_opsetid("", 20)])
    onnx.save(scaled, folder / "scaled.onnx")
    return {"twoblock": (folder / "twoblock.onnx", fp32), "tokens16": (folder / "tokens16.onnx", fp16),
            "scaled": (folder / "scaled.onnx", None)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``polynl serve`` in a subprocess on 127.0.0.1 and a free port."""

    def __init__(self, models: dict, *options: str) -> None:
        self.port = _free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.base = f"http://{self.url}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        args = [f"{name}={path}" for name, (path, _model) in models.items()]
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER_COMMAND, *args, "--host", "127.0.0.1", "--port", str(self.port),
             *options], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.base}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become ready within 60 s")

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            output, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
        return self.process.returncode, output


@pytest.fixture(scope="module")
def server(models):
    running = Server(models, "--max-batch-size", "8", "--max-delay-ms", "2", "--max-queue", "64",
                     "--max-body-mb", str(MAX_BODY_MB))
    yield running
    code, output = running.stop()
    assert code in (0, -signal.SIGTERM), output  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert "Traceback" not in output, output


@pytest.fixture()
def client(server):
    with httpclient.InferenceServerClient(server.url) as triton:
        yield triton


def _eager(model, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _input(name: str, array: np.ndarray, binary: bool) -> "httpclient.InferInput":
    tensor = httpclient.InferInput(name, list(array.shape), {"float32": "FP32", "float16": "FP16",
                                                             "float64": "FP64"}[str(array.dtype)])
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _assert_close(got: np.ndarray, want: np.ndarray, dtype: str = "float32") -> None:
    """Within the project's tolerance for ``dtype`` (polynl_deploy.defaults.TOLERANCES)."""
    np.testing.assert_allclose(got.astype(np.float32), want, **TOLERANCES[dtype])


def _batch_sizes(server, model: str = "twoblock") -> tuple[float, float, float]:
    """(batches run, rows in them, batches of one row) from the server's polynl_batch_size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(sample.name, sample.labels.get("le")): sample.value
               for family in text_string_to_metric_families(httpx.get(f"{server.base}/metrics").text)
               if family.name == "polynl_batch_size"
               for sample in family.samples if sample.labels.get("model") == model}
    return (samples[("polynl_batch_size_count", None)], samples[("polynl_batch_size_sum", None)],
            samples[("polynl_batch_size_bucket", "1.0")])


def _assert_alive(client) -> None:
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("twoblock")
    x = np.ones((1, 3, 5, 6), np.float32)
    assert client.infer("twoblock", [_input("x", x, True)]).as_numpy("output_0").shape == (1, 4, 5, 6)


def test_metadata_and_readiness(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("twoblock") and client.is_model_ready("tokens16")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "polynl-deploy" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("twoblock")
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    assert [(o["datatype"], o["shape"]) for o in meta["outputs"]] == [("FP32", [-1, 4, -1, -1]), ("FP32", [-1, -1, -1])]
    tokens = client.get_model_metadata("tokens16", model_version="1")
    assert tokens["inputs"] == [{"name": "x", "datatype": "FP16", "shape": [-1, -1, 10]}]


def test_json_inference_matches_eager_and_echoes_id(client, models):
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 14)).astype(np.float32)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in OUTPUTS]
    result = client.infer("twoblock", [_input("x", x, False)], outputs=outputs, request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    for name, want in zip(OUTPUTS, _eager(models["twoblock"][1], x)):
        np.testing.assert_allclose(result.as_numpy(name), want, atol=1e-4, rtol=1e-4)


def test_binary_fp32_inference(client, models):
    x = np.random.default_rng(1).standard_normal((3, 3, 7, 9)).astype(np.float32)
    result = client.infer("twoblock", [_input("x", x, True)])  # all outputs binary
    response = result.get_response()
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    for name, want in zip(OUTPUTS, _eager(models["twoblock"][1], x)):
        np.testing.assert_allclose(result.as_numpy(name), want, atol=1e-4, rtol=1e-4)


def test_binary_fp16_inference(client, models):
    x = np.random.default_rng(2).standard_normal((2, 9, 10)).astype(np.float16)
    result = client.infer("tokens16", [_input("x", x, True)],
                          outputs=[httpclient.InferRequestedOutput("output", binary_data=True)])
    got = result.as_numpy("output")
    assert got.dtype == np.float16 and got.shape == (2, 9, 3)
    reference = _eager(models["tokens16"][1].float(), x.astype(np.float32))[0]
    models["tokens16"][1].half()
    _assert_close(got, reference, "float16")


def test_output_selection(client, models):
    x = np.random.default_rng(3).standard_normal((1, 3, 6, 6)).astype(np.float32)
    result = client.infer("twoblock", [_input("x", x, True)],
                          outputs=[httpclient.InferRequestedOutput("output_1", binary_data=False)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["output_1"]
    assert result.as_numpy("output_0") is None
    np.testing.assert_allclose(result.as_numpy("output_1"), _eager(models["twoblock"][1], x)[1], atol=1e-4, rtol=1e-4)


def _post(server, body: bytes, model: str = "twoblock", headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{server.base}/v2/models/{model}/infer", content=body, headers=headers or {}, timeout=30)


def _json_request(shape, datatype="FP32", data=None, **extra) -> bytes:
    count = int(np.prod(shape))
    tensor = {"name": "x", "shape": list(shape), "datatype": datatype,
              "data": data if data is not None else [0.5] * count}
    return json.dumps({"inputs": [tensor], **extra}).encode()


@pytest.mark.parametrize("body, fragment", [
    (b'{"inputs": [', "malformed JSON"),
    (b'[1, 2]', "invalid inference request"),
    (_json_request((1, 4, 5, 5)), "expects shape [-1, 3, -1, -1]"),
    (_json_request((1, 3, 5)), "expects shape"),
    (_json_request((1, 3, 5, 5), data=[1.0] * 7), "needs 75 elements"),
    (_json_request((1, 3, 2, 2), data=["a"] * 12), "not FP32"),
    (_json_request((1, 3, 2, 2), datatype="FP64"), "expects datatype FP32, got FP64"),
    (_json_request((1, 3, 2, 2), datatype="BF17"), "unsupported datatype"),
    (_json_request((0, 3, 2, 2)), "expects shape"),
    (_json_request((1, 3, 2, 2), outputs=[{"name": "nope"}]), "has no output(s) ['nope']"),
    (_json_request((1, 3, 2, 2), outputs=[{"name": "output_0", "parameters": {"classification": 1}}]),
     "parameter 'classification' belongs to a protocol extension"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 3, 2, 2], "datatype": "FP32",
                             "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 48}}]}).encode(),
     "parameter 'shared_memory_byte_size' belongs to a protocol extension"),
])
def test_bad_requests_get_400_and_server_keeps_serving(server, client, body, fragment):
    response = _post(server, body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]
    _assert_alive(client)


def test_scalar_input_in_any_order(server):
    """A model with a scalar input is not batched; where the scalar comes first in the request changes nothing."""
    x = {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))}
    scale = {"name": "s", "shape": [], "datatype": "FP32", "data": [2.0]}
    for inputs in ([scale, x], [x, scale]):
        response = _post(server, json.dumps({"inputs": inputs}).encode(), model="scaled")
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [2.0 * i for i in range(8)]


def test_wrong_dtype_through_triton_client(client):
    with pytest.raises(InferenceServerException) as caught:
        client.infer("twoblock", [_input("x", np.zeros((1, 3, 4, 4), np.float64), True)])
    assert caught.value.status() == "400" and "expects datatype FP32" in caught.value.message()
    _assert_alive(client)


def test_unknown_model_is_404(server, client):
    with pytest.raises(InferenceServerException) as caught:
        client.infer("nope", [_input("x", np.zeros((1, 3, 4, 4), np.float32), True)])
    assert caught.value.status() == "404" and "unknown model" in caught.value.message()
    assert httpx.get(f"{server.base}/v2/models/nope").status_code == 404
    assert httpx.get(f"{server.base}/v2/models/twoblock/versions/2").status_code == 404
    _assert_alive(client)


def test_oversized_body_is_413(server, client):
    too_big = np.zeros((1, 3, 300, 300), np.float32)  # 1.08 MB > 1 MB
    with pytest.raises(InferenceServerException) as caught:
        client.infer("twoblock", [_input("x", too_big, True)])
    assert caught.value.status() == "413"
    _assert_alive(client)


def test_truncated_and_inconsistent_binary_data_are_400(server, client):
    x = np.ones((1, 3, 4, 4), np.float32)
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 3, 4, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    cases = [
        (header + x.tobytes()[:-10], str(len(header)), "truncated binary data"),
        (header + x.tobytes() + b"xx", str(len(header)), "bytes of binary data follow"),
        (header + x.tobytes(), str(len(header) + 10 ** 6), "Inference-Header-Content-Length"),
        (header + x.tobytes(), "abc", "Inference-Header-Content-Length"),
        (header + x.tobytes(), b"\xb2", "Inference-Header-Content-Length"),  # "²": str.isdigit() says yes
    ]
    for body, length, fragment in cases:
        response = _post(server, body, headers={"Inference-Header-Content-Length": length})
        assert response.status_code == 400 and fragment in response.json()["error"], response.text
    ok = _post(server, header + x.tobytes(), headers={"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200, ok.text
    _assert_alive(client)


def test_gzip_request_body(server):
    import gzip
    body = _json_request((1, 3, 4, 4))
    response = _post(server, gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [1, 4, 4, 4]
    bomb = gzip.compress(b" " * (MAX_BODY_MB * 1024 * 1024 + 1))
    assert _post(server, bomb, headers={"Content-Encoding": "gzip"}).status_code == 413


def test_load_run(server, models):
    """1,000 requests at 16-way concurrency, each of 16 distinct inputs: zero errors, every answer the
    eager result for its own input, and the dynamic batcher merged requests (a batch of more than one row)."""
    import gevent.pool

    requests, concurrency = 1000, 16
    rng = np.random.default_rng(4)
    inputs = rng.standard_normal((16, 1, 3, 10, 14)).astype(np.float32)
    expected = [_eager(models["twoblock"][1], x)[0] for x in inputs]
    batches_before, _, single_before = _batch_sizes(server)

    def one(index: int) -> float:
        start = time.perf_counter()
        result = triton.infer("twoblock", [_input("x", inputs[index % len(inputs)], True)])
        _assert_close(result.as_numpy("output_0"), expected[index % len(inputs)])
        return time.perf_counter() - start

    with httpclient.InferenceServerClient(server.url, concurrency=concurrency) as triton:
        started = time.perf_counter()
        latencies = np.array(gevent.pool.Pool(concurrency).map(one, range(requests)))  # the client's own I/O model
        elapsed = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    print(f"\nload run: {requests} requests, {concurrency}-way: {requests / elapsed:.0f} req/s, "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {elapsed:.1f} s")
    metrics = httpx.get(f"{server.base}/metrics").text
    assert 'polynl_infer_requests_total{model="twoblock",status="200"}' in metrics
    batches, _, single = _batch_sizes(server)
    assert (batches - single) - (batches_before - single_before) > 0, "no batch held more than one row"


def test_merged_batch_gives_each_request_its_own_rows(models):
    """Four concurrent requests with different inputs and row counts (1, 2, 1, 3) fill max_batch_size=7
    exactly, so one worker must run them as one merged batch (max delay 30 s, never reached); each answer
    is the eager result for its own input, both outputs."""
    rows = (1, 2, 1, 3)
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((n, 3, 6, 7)).astype(np.float32) for n in rows]
    merging = Server({"twoblock": models["twoblock"]}, "--max-batch-size", str(sum(rows)),
                     "--max-delay-ms", "30000", "--workers", "1")
    try:
        with httpclient.InferenceServerClient(merging.url, concurrency=len(rows)) as triton:
            pending = [triton.async_infer("twoblock", [_input("x", x, True)], request_id=str(i))
                       for i, x in enumerate(inputs)]
            results = [request.get_result() for request in pending]
        batches, batched_rows, single = _batch_sizes(merging)
    finally:
        code, output = merging.stop()
    assert code in (0, -signal.SIGTERM) and "Traceback" not in output, output
    assert (batches, batched_rows, single) == (1, sum(rows), 0), "the four requests did not run as one batch"
    for i, (x, result) in enumerate(zip(inputs, results)):
        assert result.get_response()["id"] == str(i)
        for name, want in zip(OUTPUTS, _eager(models["twoblock"][1], x)):
            assert result.as_numpy(name).shape == want.shape, (i, name)
            _assert_close(result.as_numpy(name), want)


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.base}/openapi.json")


fuzzed_schema = schemathesis.pytest.from_fixture("api_schema")


@fuzzed_schema.parametrize()
@hypothesis.settings(max_examples=30, deadline=None, derandomize=True,
                     suppress_health_check=list(hypothesis.HealthCheck))
def test_fuzzing_finds_no_server_errors(case):
    """Schema-driven requests (bounded) to every operation: never a 5xx, errors always {"error": ...}."""
    response = case.call(timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400 and response.status_code != 503:
        assert "error" in response.json()


def test_queue_full_is_503_and_shutdown_drains_in_flight_requests(models):
    """Three requests wait in a forming batch (max delay 1.5 s); a fourth is refused; SIGTERM then lets
    the three finish before the process exits."""
    import concurrent.futures

    slow = Server({"twoblock": models["twoblock"]}, "--max-batch-size", "64", "--max-delay-ms", "1500",
                  "--max-queue", "3", "--workers", "1")
    body = _json_request((1, 3, 4, 4))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        in_flight = [pool.submit(_post, slow, body) for _ in range(3)]
        deadline = time.monotonic() + 10
        while 'polynl_admitted_requests{model="twoblock"} 3.0' not in httpx.get(f"{slow.base}/metrics").text:
            assert time.monotonic() < deadline, "the three requests were never admitted"
            time.sleep(0.02)
        refused = _post(slow, b'{"inputs": [')  # refused before its body is read, so not a 400
        assert refused.status_code == 503 and "max_queue=3" in refused.json()["error"]
        assert refused.headers["retry-after"] == "1"
        slow.process.send_signal(signal.SIGTERM)
        answers = [future.result() for future in in_flight]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    code, output = slow.stop()
    assert code in (0, -signal.SIGTERM) and "Traceback" not in output, output


def test_tensorrt_engine_without_tensorrt_is_a_clear_error(tmp_path, models):
    from polynl_deploy.errors import BackendUnavailableError
    from polynl_deploy.serving import ServeSettings, create_app

    for suffix in (".plan", ".engine", ".trt"):  # the suffixes `polynl run` takes for engines too
        engine = tmp_path / f"model{suffix}"
        engine.write_bytes(b"not an engine")
        with pytest.raises(BackendUnavailableError, match="GPU|TensorRT"):
            create_app(ServeSettings({"m": engine}))
    with pytest.raises(BackendUnavailableError, match="GPU|TensorRT"):
        create_app(ServeSettings({"m": models["twoblock"][0]}, backend="tensorrt"))


def test_settings_are_checked():
    from polynl_deploy.errors import SettingsError
    from polynl_deploy.serving import ServeSettings, parse_model_args

    assert parse_model_args(["a/b/net.onnx", "other=c.onnx"]) == {"net": Path("a/b/net.onnx"), "other": Path("c.onnx")}
    with pytest.raises(SettingsError, match="given twice"):
        parse_model_args(["x.onnx", "x=y.onnx"])
    for bad in ({"models": {"a b": Path("x")}}, {"models": {}}, {"backend": "tvm"}, {"max_queue": 0},
                {"max_delay_ms": -1}, {"port": 70000}):
        with pytest.raises(SettingsError):
            ServeSettings(**{"models": {"m": Path("m.onnx")}, **bad})
