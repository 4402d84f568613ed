"""An interrupted sweep writes what it measured: by a stop event (the CLI's Ctrl-C path), by
cancelling the coroutine, and by SIGINT to the real CLI."""

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from tenk.bench import BenchConfig, run_sweep, run_sweep_async


def _slow_cfg(url, out, **kw):
    # with chunk_delay 0.02 a request of 50 tokens takes ~1 s: level 1 (8 slots, 8 prompts) is one
    # wave, level 2 (4 slots, 8 prompts) two waves; the interrupt lands inside level 2
    return BenchConfig(urls=[url], concurrency=(8, 4), num_prompts=8, input_len=8, output_len=50, warmup=0,
                       workers=kw.pop("workers", 1), out=str(out), **kw)


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_event_writes_partial_results(fake_server, tmp_path, workers):
    url, _ = fake_server(chunk_delay=0.02)
    stop = threading.Event()

    def on_progress(state):
        if state["level"] == 1 and state["in_flight"] > 0:
            stop.set()

    result = run_sweep(_slow_cfg(url, tmp_path / "p.json", workers=workers), stop=stop, on_progress=on_progress)
    assert result.interrupted and len(result.levels) == 2
    last = result.levels[-1]
    assert last.interrupted and not last.timed_out
    assert last.unfinished == 4 and last.completed == 0 and last.failed == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["interrupted"] is True and len(doc["levels"]) == 2
    assert doc["levels"][0]["completed"] == 8 and doc["levels"][1]["interrupted"] is True


def test_cancel_writes_partial_results(fake_server, tmp_path):
    url, _ = fake_server(chunk_delay=0.02)
    out = tmp_path / "c.json"

    async def main():
        task = asyncio.ensure_future(run_sweep_async(_slow_cfg(url, out)))
        for _ in range(200):  # wait until level 1 is done and level 2 is running
            await asyncio.sleep(0.05)
            if out.exists() and len(json.loads(out.read_text())["levels"]) == 1:
                break
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and len(doc["levels"]) == 2
    assert doc["levels"][1]["interrupted"] is True and doc["levels"][1]["unfinished"] > 0


def test_ctrl_c_in_the_cli(fake_server, tmp_path):
    url, _ = fake_server(chunk_delay=0.05)
    out = tmp_path / "k.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tenk.cli.main", "bench", "--url", url, "-c", "4", "-n", "8", "--input-len", "8",
         "--output-len", "200", "--warmup", "0", "--workers", "1", "-q", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(3.0)  # start-up (imports, prompts) and some streaming
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and doc["levels"][0]["unfinished"] == 4
    assert "c=  4:" in stdout
