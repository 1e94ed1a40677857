"""Scale-out: two API replicas on a three-master Redis Cluster answer like one node.

A synthetic session log (200 users, 3..15 events each, 30% skips, some client
retries) is replayed the way ``skiprec replay`` does it: before each event ask for
recommendations, then post the event. The cluster side alternates between two uvicorn
replicas on every request (a round-robin load balancer); the reference side is one
replica on a single redis-server. Every answer must be the same: same tracks, same
order, same scores, same fallback flags; the final sessions must be identical; and
the users' keys must be spread over all three masters; and the served lists'
outcome counters must agree (every list answered exactly once).
"""

from __future__ import annotations

import random

import httpx
import pytest
import redis

pytestmark = pytest.mark.reliability

NUM_USERS = 200


def session_log(seed: int = 0) -> list[tuple[str, list[dict]]]:
    rng = random.Random(seed)
    log = []
    for u in range(NUM_USERS):
        user = f"listener-{u:03d}"
        events = [
            {
                "event_id": f"{user}-{i}",
                "user_id": user,
                "track_id": f"t{min(56, int(rng.expovariate(1 / 12)))}",
                "type": "skip" if rng.random() < 0.3 else "play",
            }
            for i in range(rng.randint(3, 15))
        ]
        log.append((user, events))
    return log


def same_answer(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code == 200
    assert a.headers["X-Skiprec-Fallback"] == b.headers["X-Skiprec-Fallback"]
    left, right = a.json(), b.json()
    assert [i["track_id"] for i in left["items"]] == [
        i["track_id"] for i in right["items"]
    ]
    for x, y in zip(left["items"], right["items"], strict=True):
        assert x["score"] == pytest.approx(y["score"], abs=1e-5)


@pytest.mark.cluster
def test_two_replicas_on_a_cluster_match_a_single_node(
    tiny_bundle_dir, tmp_path, redis_cluster, redis_process, api_process
):
    log = session_log()
    rng = random.Random(1)
    with (
        redis_cluster(tmp_path / "cluster") as cluster_url,
        redis_process(tmp_path / "single") as single,
        api_process(tiny_bundle_dir, cluster_url, tmp_path / "a.log") as replica_a,
        api_process(tiny_bundle_dir, cluster_url, tmp_path / "b.log") as replica_b,
        api_process(tiny_bundle_dir, single.url, tmp_path / "s.log") as reference,
        httpx.Client(base_url=replica_a.base_url, timeout=30) as a,
        httpx.Client(base_url=replica_b.base_url, timeout=30) as b,
        httpx.Client(base_url=reference.base_url, timeout=30) as ref,
    ):
        replicas = (a, b)
        turn = 0
        compared = 0
        for user, events in log:
            for event in events:
                path = f"/recommendations/{user}?k=10"
                same_answer(replicas[turn % 2].get(path), ref.get(path))
                compared += 1
                turn += 1
                cluster_ack = replicas[turn % 2].post("/events", json=event).json()
                assert cluster_ack == ref.post("/events", json=event).json()
                turn += 1
                if rng.random() < 0.05:  # a retry that lands on the other replica
                    retry = replicas[turn % 2].post("/events", json=event)
                    assert retry.json() == {"accepted": 0, "duplicates": 1, "late": 0}
                    ref.post("/events", json=event)
            path = f"/users/{user}/session"
            ids = [e["event_id"] for e in a.get(path).json()["events"]]
            assert ids == [e["event_id"] for e in b.get(path).json()["events"]]
            assert ids == [e["event_id"] for e in ref.get(path).json()["events"]]
            assert ids == [e["event_id"] for e in events]
        assert compared == sum(len(events) for _, events in log)

        base_port = int(cluster_url.rsplit(":", 1)[1].split("/")[0])
        sizes, stream_length = [], 0
        for port in range(base_port, base_port + 3):
            with redis.Redis(port=port) as node:
                sizes.append(node.dbsize())
                try:
                    stream_length += node.xlen("skiprec:stream:events")
                except redis.ResponseError:  # MOVED: another master holds the stream
                    pass
        assert len(sizes) == 3 and all(size > 0 for size in sizes), sizes
        total = sum(len(events) for _, events in log)
        assert stream_length >= total
        # The outcome counters (one hash in the cluster, service.outcomes) agree
        # across the replicas and with the single node: each list answered once,
        # retries on the other replica included.
        experiments = [
            client.get("/admin/experiments").json() for client in (a, b, ref)
        ]
        assert experiments[0] == experiments[1] == experiments[2]
        (arm,) = experiments[0]["arms"]
        assert arm["served"] == total
        answered = arm["answered"] + arm["fallback_rates"]["hit"]["trials"]
        assert answered == total
