"""Join `tenk.bench/1` results of ONE configuration measured in several server starts (a sweep
continued at higher concurrency on the same machine, or a level re-run after a cut-off) into one
file for `tenk report`.

    python benchmarks/merge_bench.py run1_dp2.json run3_dp2.json --out dp2.json
    python benchmarks/merge_bench.py raw.json --label name=nvfp4 --label layout='TP=2 DP=1' --out nvfp4.json

Levels are keyed by (concurrency, request rate); a later file's level replaces an earlier one's.
The result keeps the first file's config and environment, sets config.concurrency to the merged
list, and records every source under config.merged_from (file name, start time, its levels), so
a reader can tell which server start measured which level. `--label KEY=VALUE` sets
config.labels (report names, src/tenk/report/FORMAT.md); the first `config.layout` found in the
sources is kept.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

SCHEMA = "tenk.bench/1"


def _key(level: dict) -> tuple:
    return (level.get("concurrency"), level.get("request_rate"))


def merge(docs: list[tuple[str, dict]], labels: dict[str, str] | None = None) -> dict:
    if not docs:
        raise ValueError("nothing to merge")
    for name, doc in docs:
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"{name} is not a {SCHEMA} result (schema {doc.get('schema')!r})")
    models = {doc["config"].get("model") for _, doc in docs}
    if len(models) > 1:
        raise ValueError(f"the results serve different models ({', '.join(sorted(map(str, models)))}): not one configuration")
    out = copy.deepcopy(docs[0][1])
    levels: dict[tuple, dict] = {}
    sources = []
    for name, doc in docs:
        for level in doc["levels"]:
            levels[_key(level)] = level
        sources.append({"file": name, "started_at": doc.get("environment", {}).get("started_at"),
                        "levels": [list(_key(lv)) for lv in doc["levels"]]})
        if "layout" not in out["config"] and "layout" in doc["config"]:
            out["config"]["layout"] = doc["config"]["layout"]
    out["levels"] = sorted(levels.values(), key=lambda lv: (lv.get("concurrency") or 0, lv.get("request_rate") or 0))
    out["config"]["concurrency"] = [lv["concurrency"] for lv in out["levels"] if lv.get("concurrency") is not None]
    out["config"]["merged_from"] = sources
    out["interrupted"] = any(doc.get("interrupted") for _, doc in docs)
    out["warnings"] = [w for _, doc in docs for w in doc.get("warnings", [])]
    if labels:
        out["config"]["labels"] = {**out["config"].get("labels", {}), **labels}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="tenk.bench/1 JSON files, earliest first")
    ap.add_argument("--label", action="append", default=[], help="KEY=VALUE for config.labels")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    labels = {}
    for item in args.label:
        key, eq, value = item.partition("=")
        if not eq:
            ap.error(f"--label {item!r} must look like KEY=VALUE")
        labels[key] = int(value) if key == "gpus" else value
    try:
        docs = [(Path(p).name, json.loads(Path(p).read_text())) for p in args.results]
        merged = merge(docs, labels)
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        ap.error(str(exc))
    Path(args.out).write_text(json.dumps(merged, indent=1))
    print(f"wrote {args.out}: {len(merged['levels'])} levels from {len(docs)} file(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
