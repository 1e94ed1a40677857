"""Reliability fixtures: the service suite's real-Redis fixtures, plus the tier rule.

The fixtures of ``tests/service/conftest.py`` (``redis_server``, ``redis_url``,
``make_settings``, ``make_client``, ``redis_process``, ``api_process``, ...) are
re-exported here so these tests share them.

Tests marked ``slow`` (minutes of load, kill -9 trials) or ``cluster`` (a three-master
Redis Cluster) are skipped unless a ``-m`` expression is given, so plain
``python -m pytest`` stays fast; run them with
``python -m pytest tests/reliability -m "cluster or slow"``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    api_process,
    client,
    make_client,
    make_settings,
    redis_cluster,
    redis_process,
    redis_server,
    redis_url,
    sync_redis,
)

HERE = Path(__file__).parent
HEAVY_MARKERS = ("slow", "cluster")


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    if config.option.markexpr:
        return  # the caller chose the tiers explicitly
    for item in items:
        if HERE not in Path(item.path).parents:
            continue
        heavy = [name for name in HEAVY_MARKERS if item.get_closest_marker(name)]
        if heavy:
            item.add_marker(
                pytest.mark.skip(
                    reason=f'{"/".join(heavy)} tier: run with -m "cluster or slow"'
                )
            )
