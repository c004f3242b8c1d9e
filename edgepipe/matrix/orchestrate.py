"""Run a matrix on Ray: keys first (cheap, in the driver), builds as tasks, profiling as one
actor per board. Ray starts only when there is work: an all-cached matrix without boards
returns without it.

Ray, not a scheduler of our own: the same command runs on a laptop (a local instance sized to
the machine) and on a build farm (`--address`), with Ray handling placement, retries of lost
workers and data movement.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepipe.config import load_target
from edgepipe.errors import BadInputError, EdgepipeError
from edgepipe.extras import require
from edgepipe.matrix.cache import BuildCache, cache_key, tool_fingerprint
from edgepipe.matrix.spec import Cell, Matrix
from edgepipe.matrix.tasks import DeviceWorker, build_cell
from edgepipe.profiles import load_profile


def _job(matrix: Matrix, cell: Cell, cache: BuildCache, tools: dict[str, str]) -> dict[str, Any]:
    """The build job of a cell, with its cache key; raises EdgepipeError for a cell-level problem."""
    model = matrix.resolve(cell.model.model)
    target = load_target(cell.target)
    profile = load_profile(cell.profile)
    job = {"model": model, "target": cell.target, "profile": cell.profile, "inputs": cell.model.inputs,
           "calib": matrix.resolve(cell.model.calib), "eval": matrix.resolve(cell.model.eval),
           "train": matrix.resolve(cell.model.train), "weights": matrix.resolve(cell.model.weights),
           "cache": str(cache.root)}
    target_json = {**target.to_json(), "source": target.source.read_text(encoding="utf-8")}
    job["key"], job["key_parts"] = cache_key(
        model=model, weights=job["weights"], inputs=cell.model.inputs, target=target_json,
        profile=profile.to_json(), calib=job["calib"], eval_data=job["eval"], train=job["train"], tools=tools)
    job["target_resolved"] = target.name
    return job


def _start_ray(address: str | None, jobs: int) -> dict[str, Any]:
    ray = require("ray", "edgepipe matrix")
    import logging

    logging.getLogger("ray").setLevel(logging.ERROR)  # Ray's start-up notices are not the user's business
    started = time.perf_counter()
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise BadInputError(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]} "
                            "(a cluster with token authentication needs RAY_AUTH_MODE=token and its token in "
                            "~/.ray/auth_token or $RAY_AUTH_TOKEN)") from None
    resources = ray.cluster_resources()
    return {"address": address or "local", "nodes": len(ray.nodes()), "cpus": resources.get("CPU"),
            "start_seconds": round(time.perf_counter() - started, 2)}


def _run_limited(ray, remote_fn, jobs: list[dict[str, Any]], limit: int,
                 on_done: Callable[[int, dict[str, Any]], None]) -> None:
    """At most `limit` tasks in flight (a shared cluster is not ours alone)."""
    pending: dict[Any, int] = {}
    queue = list(enumerate(jobs))
    while queue or pending:
        while queue and len(pending) < limit:
            index, job = queue.pop(0)
            pending[remote_fn.remote(job)] = index
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            on_done(pending.pop(ref), ray.get(ref))


def run_matrix(matrix: Matrix, *, out: Path, address: str | None = None, jobs: int | None = None,
               on_cell: Callable[[dict[str, Any]], None] = lambda cell: None) -> dict[str, Any]:
    """Build every cell (cache first), profile on the fleet, write matrix.json and matrix.md."""
    from edgepipe.matrix import report

    started = time.perf_counter()
    out = out.resolve()  # workers and board actors may run in another working directory
    jobs = jobs or os.cpu_count() or 1
    if jobs < 1:
        raise BadInputError("--jobs must be at least 1")
    cache = BuildCache((matrix.folder / matrix.spec.cache).resolve())
    tools = tool_fingerprint()
    cells: list[dict[str, Any]] = []
    to_build: list[tuple[int, dict[str, Any]]] = []
    for cell in matrix.cells:
        row: dict[str, Any] = {"model": cell.model.name, "target": cell.target, "profile": cell.profile,
                               "devices": {}}
        cells.append(row)
        try:
            job = _job(matrix, cell, cache, tools)
        except EdgepipeError as exc:
            row.update(status="failed", exit_code=exc.exit_code, error=str(exc), cache_hit=False)
            on_cell(row)
            continue
        row["key"], row["target_resolved"] = job["key"], job["target_resolved"]
        found, problem = cache.check(job["key"])
        if found is not None:
            row.update(build_cell(job))  # a verified hit and a manifest read: no worker needed
            on_cell(row)
        else:
            if problem:
                row["cache_problem"] = problem  # the worker finds the entry gone and rebuilds it
            to_build.append((len(cells) - 1, job))
    ray_info: dict[str, Any] | None = None
    profiling = bool(matrix.devices) and (bool(to_build) or any(r.get("status") == "cached" for r in cells))
    if to_build or profiling:
        ray_info = _start_ray(address, jobs)
    try:
        if to_build:
            import ray

            remote_build = ray.remote(num_cpus=1)(build_cell)

            def finished(index: int, result: dict[str, Any]) -> None:
                row = cells[to_build[index][0]]
                row.update(result)
                on_cell(row)

            _run_limited(ray, remote_build, [job for _, job in to_build], jobs, finished)
        device_rows = _profile_on_fleet(matrix, cells, out) if matrix.devices else []
    finally:
        if ray_info is not None:
            import ray

            ray.shutdown()  # stops a local instance; with --address, only disconnects this driver
    result = {"schema": report.SCHEMA, "matrix": str(matrix.path), "cache": str(cache.root),
              "seconds": round(time.perf_counter() - started, 2), "ray": ray_info, "tools": tools,
              "cells": cells, "devices": device_rows, "summary": report.summary(cells, device_rows)}
    report.write(result, out)
    return result


def _profile_on_fleet(matrix: Matrix, cells: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """Every built cell on every board of its target; one actor per board serializes its jobs."""
    import ray

    settings = matrix.spec.profiling
    workers: dict[str, Any] = {}
    device_rows = []
    pending: dict[Any, tuple[dict[str, Any], str]] = {}
    for device in matrix.devices:
        try:
            device_target = load_target(device.target).name
        except EdgepipeError as exc:
            device_rows.append({"name": device.name, "host": device.host, "target": device.target,
                                "status": "failed", "error": str(exc)})
            continue
        device_rows.append({"name": device.name, "host": device.host, "target": device_target,
                            "status": "idle"})
        for row in cells:
            if row.get("status") not in ("built", "cached") or row.get("target_resolved") != device_target:
                continue
            if device.name not in workers:
                actor = ray.remote(num_cpus=0, max_concurrency=device.max_jobs)(DeviceWorker)
                workers[device.name] = actor.remote(device.model_dump(), settings.runs, settings.warmup,
                                                    settings.retries, settings.rounds)
            name = f"{row['model']}-{row['target']}-{row['profile']}@{device.name}.json"
            profile_path = out / "profiles" / name
            ref = workers[device.name].profile.remote(row["bundle"], str(profile_path))
            pending[ref] = (row, device.name)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            row, name = pending.pop(ref)
            row["devices"][name] = ray.get(ref)
    for device_row in device_rows:
        outcomes = [r["devices"][device_row["name"]]["status"] for r in cells
                    if device_row["name"] in r["devices"]]
        if device_row["status"] == "idle" and outcomes:
            device_row["status"] = "unreachable" if "unreachable" in outcomes else "ok"
            device_row["jobs"] = len(outcomes)
    return device_rows
