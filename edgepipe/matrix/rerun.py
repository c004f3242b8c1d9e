"""`edgepipe compare --run OLD/matrix.json NEW/matrix.json`: every cell the two matrices share timed
A/B on each board that profiled it (or on this machine, for a matrix without boards): old and new
bundle in interleaved rounds on the same device, then the noise-aware decision of `compare`.

Stored profiles taken on different days see the device in different states; interleaved rounds
see the same one, which is what a release gate on a fleet needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepipe.errors import BackendError, BadInputError
from edgepipe.matrix.report import load_matrix_json
from edgepipe.matrix.spec import load_matrix
from edgepipe.profiler.remote import RemoteHost


def rerun(old_path: Path, new_path: Path, *, rounds: int, runs: int, warmup: int, metric: str,
          max_slowdown: float, alpha: float, threads: int | None = None,
          pubkey: Path | None = None, looks: int | None = None) -> dict[str, Any]:
    from edgepipe import api

    old, new = load_matrix_json(old_path), load_matrix_json(new_path)
    spec_path = Path(new.get("matrix", ""))
    if not spec_path.is_file():
        raise BadInputError(f"{new_path}: its matrix file {spec_path} is gone; the boards are named there")
    boards = {device.name: device for device in load_matrix(spec_path).devices}
    old_cells = {(c["model"], c["target"], c["profile"]): c for c in old["cells"]}
    rows: list[dict[str, Any]] = []
    for cell in new["cells"]:
        ident = (cell["model"], cell["target"], cell["profile"])
        before = old_cells.get(ident)
        if before is None or not before.get("bundle") or not cell.get("bundle"):
            rows.append({"cell": ident, "check": "A/B", "verdict": "new" if before is None else "missing"})
            continue
        bundles = Path(before["bundle"]), Path(cell["bundle"])
        places = [(name, RemoteHost.of_device(boards[name].model_dump()))
                  for name in cell.get("devices", {}) if name in boards]
        for name, remote in places or [("this machine", None)]:
            try:
                result = api.compare_run(*bundles, rounds=rounds, runs=runs, warmup=warmup, threads=threads,
                                         remote=remote, metric=metric, max_slowdown=max_slowdown, alpha=alpha,
                                         pubkey=pubkey, **({"looks": looks} if looks else {}))
            except BackendError as exc:  # a board that dropped off: this row, not the whole gate
                rows.append({"cell": ident, "check": f"A/B@{name}", "verdict": "missing", "detail": str(exc)})
                continue
            decision = result["decision"]
            rows.append({"cell": ident, "check": f"A/B@{name}", "baseline": decision["baseline"],
                         "new": decision["new"], "ratio": decision["ratio"], "verdict": decision["verdict"]})
    regressions = [r for r in rows if r["verdict"] == "regression"]
    return {"kind": "matrix", "mode": "interleaved A/B per board", "rows": rows,
            "regressions": len(regressions), "exit_code": 1 if regressions else 0}
