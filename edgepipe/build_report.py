"""report.md: the build as a person reads it (stage table, parity, sizes, warnings)."""

from __future__ import annotations

from typing import Any


def _size(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def _metric(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _pass_table(stage: dict[str, Any]) -> list[str]:
    """The per-pass table of a stage that runs graph passes (fuse)."""
    passes = stage["metrics"].get("passes")
    if not passes:
        return []
    lines = ["", f"### Passes of `{stage['stage']}` ({stage['metrics']['nodes_before']} → "
             f"{stage['metrics']['nodes_after']} nodes)", "",
             "| pass | rewrites | nodes | op change | max abs diff | cosine | seconds |",
             "|---|---:|---|---|---:|---:|---:|"]
    for row in passes:
        if row["skipped"]:
            lines.append(f"| {row['pass']} | skipped | | | | | |")
            continue
        change = ", ".join(f"{op} {delta:+d}" for op, delta in row["op_change"].items()) or "—"
        lines.append(f"| {row['pass']} | {row['rewrites']} | {row['nodes_before']} → "
                     f"{row['nodes_after']} | {change} | {row['max_abs_diff']:.3g} | "
                     f"{row['min_cosine']:.6f} | {row['seconds']:.3f} |")
    lines.append("")
    lines.append("Parity of each pass is against the stage's input model.")
    return lines


def render(manifest: dict[str, Any]) -> str:
    model, target, profile = manifest["model"], manifest["target"], manifest["profile"]
    parity = manifest["parity"]
    lines = [
        f"# {model['name']} for {target['name']}",
        "",
        f"Built by edgepipe {manifest['tools']['edgepipe']} on {manifest['build']['time']} "
        f"with profile `{profile['name']}` and backend `{manifest['backend']['name']}`.",
        "",
        f"Source: `{model['source']['spec']}` ({model['source']['kind']}, "
        f"sha256 `{model['source']['sha256'][:16]}…`).",
        "",
        "## Stages",
        "",
        "| stage | output | seconds | max abs diff | cosine | top-1 agreement |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for stage in manifest["stages"]:
        p = stage["parity"] or {}
        lines.append(
            f"| {stage['stage']} | `{stage['output']}` | {stage['seconds']:.2f} | "
            f"{_metric(p.get('max_abs_diff'), '.3g')} | {_metric(p.get('min_cosine'), '.6f')} | "
            f"{_metric(p.get('min_top1_agreement'), '.3f')} |"
        )
    for stage in manifest["stages"]:
        lines += _pass_table(stage)
    budget = profile["accuracy"]
    lines += [
        "",
        "## Parity of the deployed model",
        "",
        f"Compared with the source model on {parity['reference_inputs']}.",
        f"Budget: every element within atol {budget['atol']:g} + rtol {budget['rtol']:g} · |ref| "
        f"(worst: {parity['max_tolerance_ratio']:.3g}× the tolerance), cosine ≥ "
        f"{budget['min_cosine']:g}.",
        "",
        "| output | max abs diff | mean abs diff | cosine | top-1 agreement |",
        "|---|---:|---:|---:|---:|",
    ]
    for out in parity["outputs"]:
        lines.append(f"| {out['name']} | {out['max_abs_diff']:.3g} | {out['mean_abs_diff']:.3g} | "
                     f"{out['cosine']:.6f} | {_metric(out['top1_agreement'], '.3f')} |")
    lines += ["", "## Inputs and outputs", "", "| | name | shape | dtype | layout |",
              "|---|---|---|---|---|"]
    for kind in ("inputs", "outputs"):
        for spec in manifest[kind]:
            lines.append(f"| {kind[:-1]} | {spec['name']} | {'x'.join(map(str, spec['shape']))} | "
                         f"{spec['dtype']} | {spec['layout'] or '—'} |")
    lines += ["", "## Files", "", "| file | size | sha256 |", "|---|---:|---|"]
    for entry in manifest["files"]:
        if entry["path"] == "report.md":
            continue  # cannot list its own hash
        lines.append(f"| {entry['path']} | {_size(entry['size'])} | `{entry['sha256'][:16]}…` |")
    warnings = [f"{s['stage']}: {w}" for s in manifest["stages"] for w in s["warnings"]]
    lines += ["", "## Warnings", ""]
    lines += [f"- {w}" for w in warnings] or ["None."]
    lines += [
        "",
        "## Run on the device",
        "",
        "```sh",
        "python run.py --verify                          # check every file against the manifest",
        "python run.py --input sample.npz --output out.npz",
        "python run.py --benchmark --runs 100 --threads 2 --json",
        "```",
        "",
        "Tool versions: " + ", ".join(f"{k} {v}" for k, v in manifest["tools"].items()) + ".",
        "",
    ]
    return "\n".join(lines)
