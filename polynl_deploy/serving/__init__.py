"""Serve exported models over the Open Inference Protocol (KServe v2) REST API.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client)::

    from polynl_deploy.serving import ServeSettings, serve
    serve(ServeSettings({"net": Path("model.onnx")}, port=8000, max_batch_size=8))
"""

from polynl_deploy.serving.app import create_app
from polynl_deploy.serving.server import serve
from polynl_deploy.serving.settings import ServeSettings, parse_model_args

__all__ = ["ServeSettings", "create_app", "parse_model_args", "serve"]
