"""One latency cache for every study of an experiment: a network two studies propose is measured once.

Each study keeps its own cache (search.study); before a study runs it is given the experiment's cache, and after
it runs its new measurements are added to it. The keys name the machine and the deployment, so only latencies
measured in the same setting are ever reused.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.kit import write_json, write_text

# The name search.study gives a study's own cache: the shared one is copied in under it, so the two must agree.
SHARED_CACHE = "latency_cache.json"


def share_cache(shared: Path, study_dir: Path) -> None:
    """Give a study the latencies measured so far (same machine and deployment: the keys say so)."""
    study_cache = study_dir / SHARED_CACHE
    if shared.exists() and not study_cache.exists():
        study_dir.mkdir(parents=True, exist_ok=True)
        write_text(study_cache, shared.read_text())


def collect_cache(shared: Path, study_dir: Path) -> None:
    """Add a study's new measurements to the shared cache."""
    def entries(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text()).get("entries", {})
        except (OSError, ValueError):
            return {}

    merged = entries(shared) | entries(study_dir / SHARED_CACHE)
    if merged:
        write_json(shared, {"version": 1, "entries": merged})


__all__ = ["SHARED_CACHE", "collect_cache", "share_cache"]
