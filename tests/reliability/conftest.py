"""Reliability fixtures: the service suite's real-Redis fixtures, plus process helpers.

The fixtures of ``tests/service/conftest.py`` (``redis_server``, ``redis_url``,
``make_settings``, ``make_client``, ...) are re-exported here so these tests share them;
``tests/reliability/procs.py`` starts the processes tests stop, kill and restart.
"""

from tests.service.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    client,
    make_client,
    make_settings,
    redis_server,
    redis_url,
    sync_redis,
)
