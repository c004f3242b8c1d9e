"""matrix.json, matrix.md and the cell-by-cell regression gate between two matrix.json files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA = "edgepipe.matrix/1"


def summary(cells: list[dict[str, Any]], devices: list[dict[str, Any]]) -> dict[str, Any]:
    codes = [c.get("exit_code", 0) for c in cells if c.get("status") == "failed"]
    profiled = [d for c in cells for d in c["devices"].values()]
    return {"cells": len(cells),
            "built": sum(c.get("status") == "built" for c in cells),
            "cached": sum(c.get("status") == "cached" for c in cells),
            "failed": len(codes),
            "rebuilt_corrupt": sum(bool(c.get("cache_problem")) for c in cells),
            "profiled": sum(p["status"] == "profiled" for p in profiled),
            "profile_failed": sum(p["status"] == "failed" for p in profiled),
            "unreachable_devices": sorted(d["name"] for d in devices if d["status"] == "unreachable"),
            "exit_code": max([*codes, *(p.get("exit_code", 0) for p in profiled if p["status"] == "failed"),
                              0])}


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    devices = sorted({name for c in result["cells"] for name in c["devices"]})
    lines = [f"# Matrix {Path(result['matrix']).name}", "",
             f"{s['cells']} cells: {s['built']} built, {s['cached']} from the cache, {s['failed']} failed; "
             f"{s['profiled']} profiled on devices" + (f"; unreachable: {', '.join(s['unreachable_devices'])}"
                                                     if s["unreachable_devices"] else "")
             + (f"; {s['rebuilt_corrupt']} rebuilt after their cache entry failed verification"
                if s.get("rebuilt_corrupt") else "") +
             f". {result['seconds']:.1f} s.", "",
             "| model | target | profile | status | size | top-1 int8 | cosine | "
             + " | ".join(f"{d} p50" for d in devices) + (" |" if devices else "|"),
             "|---|---|---|---|---:|---:|---:|" + "---:|" * len(devices)]
    for cell in result["cells"]:
        accuracy = cell.get("accuracy", {})
        failed = cell["status"] == "failed"
        status = cell["status"] + (f" ({cell['exit_code']}): {cell['error']}" if failed else "")
        size = _fmt(cell.get("size_bytes") and cell["size_bytes"] / 2**20, ".2f")
        per_device = []
        for name in devices:
            entry = cell["devices"].get(name)
            if entry is None:
                per_device.append("")
            elif entry["status"] == "profiled":
                per_device.append(f"{entry['p50_ms']:.3f} ms")
            else:
                per_device.append(entry["status"])
        lines.append(f"| {cell['model']} | {cell['target']} | {cell['profile']} | {status} | {size} MiB | "
                     f"{_fmt(accuracy.get('top1_int8'), '.2f')} | "
                     f"{_fmt(accuracy.get('parity_min_cosine'), '.6f')} |"
                     + "".join(f" {v} |" for v in per_device))
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> None:
    from edgepipe.api import write_json_atomically

    write_json_atomically(out / "matrix.json", result)
    (out / "matrix.md").write_text(markdown(result), encoding="utf-8")


def load_matrix_json(path: Path) -> dict[str, Any]:
    from edgepipe.compare import load_document

    return load_document(path, SCHEMA, "matrix.json")


def is_matrix_json(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


def compare(baseline: dict[str, Any], new: dict[str, Any], *, metric: str, max_slowdown: float,
            alpha: float, max_top1_drop: float = 1.0) -> dict[str, Any]:
    """Cell by cell and device by device: a cell that built before and fails now, an int8 top-1
    drop beyond `max_top1_drop` points, or a latency regression on any board (the noise-aware
    decision of `edgepipe compare`) is a regression; exit 1 on any."""
    from edgepipe.compare import decide

    old_cells = {(c["model"], c["target"], c["profile"]): c for c in baseline["cells"]}
    rows = []
    for cell in new["cells"]:
        ident = (cell["model"], cell["target"], cell["profile"])
        old = old_cells.get(ident)
        if old is None:
            rows.append({"cell": ident, "check": "build", "verdict": "new"})
            continue
        if old.get("status") != "failed" and cell.get("status") == "failed":
            rows.append({"cell": ident, "check": "build", "verdict": "regression",
                         "detail": cell.get("error")})
        old_top1 = old.get("accuracy", {}).get("top1_int8")
        new_top1 = cell.get("accuracy", {}).get("top1_int8")
        if old_top1 is not None and new_top1 is not None:
            drop = old_top1 - new_top1
            rows.append({"cell": ident, "check": "top-1 int8", "baseline": old_top1, "new": new_top1,
                         "verdict": "regression" if drop > max_top1_drop else "pass"})
        for device, entry in cell["devices"].items():
            before = old["devices"].get(device)
            if not before or before.get("status") != "profiled" or entry.get("status") != "profiled":
                rows.append({"cell": ident, "check": f"latency@{device}",
                             "verdict": "missing" if entry.get("status") != "profiled" else "new"})
                continue
            decision = decide(before.get("rounds") or before["samples"],
                              entry.get("rounds") or entry["samples"], metric=metric,
                              max_slowdown=max_slowdown, alpha=alpha)
            rows.append({"cell": ident, "check": f"latency@{device}", "baseline": decision.baseline,
                         "new": decision.new, "ratio": decision.ratio, "verdict": decision.verdict})
    regressions = [r for r in rows if r["verdict"] == "regression"]
    return {"kind": "matrix", "rows": rows, "regressions": len(regressions),
            "exit_code": 1 if regressions else 0}
