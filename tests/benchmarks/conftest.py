"""Fixtures for the live-service tools: the service suite's real Redis and app client.

``tests/service/conftest.py`` defines them; they are re-exported here for the replay
test, which drives the app in-process the way ``skiprec replay`` drives a server.
"""

from __future__ import annotations

from tests.service.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    client,
    make_client,
    make_settings,
    redis_server,
    redis_url,
)
