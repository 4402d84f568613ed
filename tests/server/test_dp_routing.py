"""The pieces of data parallelism that need no server: the load balancer's rule, the load it
reads from a replica, and which GPUs each replica gets."""

from __future__ import annotations

import pytest

from tenk.errors import ConfigError
from tenk.server.args import ServerArgs
from tenk.server.engine_client import ReplicaLink
from tenk.server.load_balancer import LeastLoaded
from tenk.server.placement import replica_envs
from tenk.server.wire import Stats


def test_lowest_waiting_times_4_plus_running_wins():
    lb = LeastLoaded()
    # scores 4*1+0=4, 0*4+5=5, 4*0+3=3: replica 2
    assert lb.pick([(1, 0), (0, 5), (0, 3)]) == 2
    # a waiting request costs 4 running ones: (0, 4) beats (1, 1) only once it is lower
    assert lb.pick([(1, 1), (0, 4)]) == 1
    assert lb.pick([(1, 0), (0, 5)]) == 0
    assert lb.pick([None, (9, 9), None]) == 1
    assert lb.pick([None, None]) is None


def test_ties_take_turns():
    lb = LeastLoaded()
    assert [lb.pick([(0, 0)] * 3) for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    # a replica that is down is skipped, the others still alternate
    assert [lb.pick([(0, 0), None, (0, 0)]) for _ in range(4)] == [0, 2, 0, 2]


def _stats(running: int, waiting: int) -> Stats:
    return Stats(running, waiting, 0.0, 1, 16, 0, 0, 0, 0, 0)


def test_load_counts_requests_sent_since_the_last_stats_as_waiting():
    link = ReplicaLink(0, replica=None)
    assert link.load() == (0, 0)
    link.routes = {f"r{i}": None for i in range(5)}  # 5 sent, no stats yet: all waiting
    assert link.load() == (5, 0)
    link.stats = _stats(running=3, waiting=0)  # 3 reported running, 2 newer ones
    assert link.load() == (2, 3)
    link.routes = {"r0": None}  # stale stats: never more running than it owns
    assert link.load() == (0, 1)


def test_replica_i_gets_gpus_i_times_tp():
    envs = replica_envs(2, 2, "auto", {"CUDA_VISIBLE_DEVICES": "4,5,6,7", "OMP_NUM_THREADS": "1"})
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["4,5", "6,7"]
    assert all(e["OMP_NUM_THREADS"] == "1" for e in envs)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in replica_envs(3, 1, "cuda", {"CUDA_VISIBLE_DEVICES": "0,1,2"})] == [
        "0", "1", "2"]  # fmt: skip
    # CPU replicas: no GPU assignment
    assert replica_envs(2, 1, "cpu", {"CUDA_VISIBLE_DEVICES": "0"}) == [{"CUDA_VISIBLE_DEVICES": "0"}] * 2
    with pytest.raises(ConfigError, match="needs 4 GPUs, but 2 are visible"):
        replica_envs(2, 2, "auto", {"CUDA_VISIBLE_DEVICES": "0,1"})


def test_bad_dp_arguments_are_sentences():
    with pytest.raises(ConfigError, match="positive integer"):
        ServerArgs(model="m", data_parallel_size=0)
    with pytest.raises(ConfigError, match="mp, ray"):
        ServerArgs(model="m", distributed_executor="slurm")
    with pytest.raises(ConfigError, match="needs --distributed-executor ray"):
        ServerArgs(model="m", ray_address="10.0.0.1:6379")
