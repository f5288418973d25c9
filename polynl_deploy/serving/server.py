"""``serve``: run the app with uvicorn; SIGINT/SIGTERM stop accepting work, drain, then exit."""

from typing import Callable

import uvicorn

from polynl_deploy.serving.app import create_app
from polynl_deploy.serving.settings import ServeSettings


class _DrainingServer(uvicorn.Server):
    """Marks the app as draining (readiness 503, new inferences 503) as soon as a stop signal arrives;
    uvicorn then waits up to ``timeout_graceful_shutdown`` for in-flight requests."""

    def __init__(self, config: uvicorn.Config, state) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig, frame) -> None:
        self._state.draining = True
        super().handle_exit(sig, frame)


def serve(settings: ServeSettings, on_ready: Callable[[str], None] = lambda url: None) -> None:
    """Load the models, call ``on_ready`` with the base URL, then serve until stopped."""
    app = create_app(settings)
    on_ready(f"http://{settings.host}:{settings.port}/v2")
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=settings.access_log, timeout_graceful_shutdown=settings.drain_timeout_s,
                            lifespan="on")
    _DrainingServer(config, app.state.serving).run()
