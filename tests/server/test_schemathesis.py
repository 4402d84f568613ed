"""schemathesis against the server's /openapi.json: no 5xx, and every response (status code,
content type, JSON body, SSE events) matches what the schema documents.

A server of its own with a 64-token context keeps each generated request cheap (schemathesis
asks for n up to 128 and no max_tokens, i.e. the whole context)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.server.conftest import ENGINE, start_server

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance")  # fmt: skip


@pytest.fixture(scope="module")
def small_server(tiny_model_dir):
    handle = start_server(tiny_model_dir, api_key="st-key", engine={**ENGINE, "max_model_len": 64})
    yield handle
    handle.stop()


def test_schemathesis_finds_no_violations(small_server, tmp_path):
    exe = shutil.which("schemathesis") or shutil.which("st")
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install -e .[test])")
    cmd = [
        exe, "run", f"{small_server.url}/openapi.json",
        "-H", "Authorization: Bearer st-key",
        "--checks", CHECKS,
        "--phases", "coverage,fuzzing",
        "--max-examples", "25", "--workers", "1",  # 3.11 ast.parse in threads trips hypothesis
        "--seed", "7",
        "--request-timeout", "60",
        "--no-color",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    print(out[-3000:])
    assert proc.returncode == 0, out[-6000:]
    assert "Tested: 8" in out or "Selected: 8/8" in out
