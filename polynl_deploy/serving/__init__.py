"""Serve exported models over the Open Inference Protocol (KServe v2) REST API.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client)::

    from polynl_deploy.serving import ServeSettings, serve
    serve(ServeSettings({"net": Path("model.onnx")}, port=8000, max_batch_size=8))
"""

import importlib.util

from polynl_deploy.errors import BackendUnavailableError

_missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(name) is None]
if _missing:
    raise BackendUnavailableError(f"serving needs {', '.join(_missing)}: pip install 'polynl-deploy[serve]'")

from polynl_deploy.serving.app import create_app  # noqa: E402
from polynl_deploy.serving.server import serve  # noqa: E402
from polynl_deploy.serving.settings import ServeSettings, parse_model_args  # noqa: E402

__all__ = ["ServeSettings", "create_app", "parse_model_args", "serve"]
