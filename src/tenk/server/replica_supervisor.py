"""Restarting a replica that died, with backoff, while the others keep serving.

The first restart comes RESTART_BACKOFF_S[0] after the death; each failed start (or a replica
that dies again soon after coming back) waits longer, up to the last value. A replica that
stayed up STABLE_S starts over from the shortest wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tenk.server.engine_client import EngineClient, ReplicaLink
    from tenk.server.replica import Replica

log = logging.getLogger("tenk.server")

RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_S = 60.0


def _backoff(link: ReplicaLink) -> float:
    return RESTART_BACKOFF_S[min(link.failures_in_row, len(RESTART_BACKOFF_S) - 1)]


async def restart_replica(client: EngineClient, link: ReplicaLink) -> None:
    if time.monotonic() - link.up_since >= STABLE_S:
        link.failures_in_row = 0
    while not (client.closing or client.draining):
        delay = _backoff(link)
        link.failures_in_row += 1
        log.info("restarting engine replica %d in %.0f s", link.index, delay)
        await asyncio.sleep(delay)
        if client.closing or client.draining:
            return
        link.state = "starting"
        try:
            replica = await asyncio.to_thread(_start, client, link)
        except Exception as exc:
            link.starting = None
            if client.closing:
                return
            link.state, link.reason = "down", f"its restart failed: {exc}"
            log.error("engine replica %d did not restart: %s", link.index, exc)
            continue
        link.starting = None
        if client.closing or client.draining:
            replica.kill()
            return
        link.restarts += 1
        client.attach(link, replica)
        if client.metrics is not None:
            client.metrics.replica_restarted(link.label)
        log.info("engine replica %d is back (%s) and takes requests again (restart %d)", link.index, replica.where,
                 link.restarts)  # fmt: skip
        return


def _start(client: EngineClient, link: ReplicaLink) -> Replica:
    """In a worker thread: start the replica and wait until its model is loaded."""
    replica = link.starting = client.launcher.start(link.index)
    if client.closing:  # close() ran between the two lines above and could not see it
        replica.kill()
    replica.wait_ready(client.launcher.args.startup_timeout_s)
    return replica
