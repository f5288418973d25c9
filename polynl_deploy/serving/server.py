"""``serve``: run the app with uvicorn; SIGINT/SIGTERM stop accepting work, drain, then exit."""

import socket
from typing import Callable

import uvicorn

from polynl_deploy.errors import SettingsError
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


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``: a bad address or a port in use is an error before anything loads."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise SettingsError(f"serve: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SettingsError(f"serve: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(settings: ServeSettings, on_ready: Callable[[str], None] = lambda url: None) -> None:
    """Bind the address, load the models, call ``on_ready`` with the base URL, then serve until stopped."""
    sock = _listening_socket(settings.host, settings.port)
    try:
        app = create_app(settings)
    except BaseException:
        sock.close()
        raise
    on_ready(f"http://{settings.host}:{sock.getsockname()[1]}/v2")
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=settings.access_log, timeout_graceful_shutdown=settings.drain_timeout_s,
                            lifespan="on")
    _DrainingServer(config, app.state.serving).run(sockets=[sock])
