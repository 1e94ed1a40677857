"""Every caller's Redis commands of one event-loop turn, sent in one round trip.

A round trip costs the event loop about as much CPU (taking a pooled connection,
the write, waking for the reply, parsing it) whatever it carries, which for a
recommendation is more than its Lua costs Redis (docs/BENCHMARKS.md, "Redis round
trips, shared"). Requests that reach the store in the same turn (the answers of one
inference batch keeping their served lists, reads of GETs that arrived in one poll,
posts answered together) share one non-transactional pipeline, as ioredis'
``enableAutoPipelining`` does: the first caller of a turn schedules the send for the
next, so nobody waits longer than one turn of the loop. Each caller gets its own
replies; commands stay in their callers' order, so one caller's commands still reach
Redis in the order given.

Non-transactional: one caller's command that Redis refuses is that caller's reply,
an exception object as in ``pipeline.execute(raise_on_error=False)``, and changes
nothing for the others. A round trip that fails as a whole (connection lost,
socket timeout) fails every caller in it with the same exception; redis-py's retry
of a lost connection resends the pipeline first, as it would a caller's own.
A caller that stops waiting (cancelled, or past its deadline) before the send is
left out of it; once sent, its commands run and their replies are dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

Command = tuple[Any, ...]


class AutoPipeline:
    """Coalesces the commands of every caller of a loop turn on one client."""

    def __init__(self, client: Any) -> None:
        self.client = client  # redis.asyncio.Redis | RedisCluster
        self._queued: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        # The loop keeps only weak references to tasks: a send must not be
        # collected while its callers wait.
        self._sending: set[asyncio.Task[None]] = set()

    def execute(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]]:
        """A future of the replies of ``commands``, in their order."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append((commands, future))
        return future

    async def drain(self) -> None:
        """Wait for every round trip already sent (before the client closes)."""
        while self._queued or self._sending:
            if self._sending:
                await asyncio.wait(set(self._sending))
            else:
                await asyncio.sleep(0)  # the queued send starts on the next turn

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        waiting = [(commands, fut) for commands, fut in queued if not fut.done()]
        if not waiting:
            return
        task = asyncio.get_running_loop().create_task(self._send(waiting))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(
        self, waiting: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]
    ) -> None:
        pipe = self.client.pipeline(transaction=False)
        for commands, _ in waiting:
            for command in commands:
                # execute_command, not the helpers: redis-py's ClusterPipeline
                # blocks some (evalsha) while it routes a raw command by its keys.
                pipe.execute_command(*command)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, future in waiting:
                future.cancel()
            raise
        except Exception as exc:  # the round trip failed: so did every caller's
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for commands, future in waiting:
            end = start + len(commands)
            if not future.done():
                future.set_result(replies[start:end])
            start = end
