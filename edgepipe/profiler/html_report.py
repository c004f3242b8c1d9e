"""`edgepipe profile --report`: one self-contained HTML page an engineer can look at.

Plots are drawn with matplotlib (extra `[report]`) as inline SVG, so the page has no
external files and survives being attached to a CI run or an e-mail.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.extras import require


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prologue: the SVG is inlined


def _latency_figures(samples: list[float]) -> str:
    pyplot = require("matplotlib.pyplot", "edgepipe profile --report")
    values = np.sort(np.asarray(samples, dtype=np.float64))
    figure, (histogram, cdf) = pyplot.subplots(1, 2, figsize=(10, 3.2))
    histogram.hist(values, bins=min(50, max(10, len(values) // 5)), color="#4472c4")
    histogram.set(title="latency histogram", xlabel="ms", ylabel="runs")
    cdf.plot(values, np.arange(1, len(values) + 1) / len(values), color="#4472c4")
    for quantile in (50, 90, 99):
        cdf.axvline(np.percentile(values, quantile), linestyle=":", color="grey")
    cdf.set(title="latency CDF (p50, p90, p99 dotted)", xlabel="ms", ylabel="fraction of runs")
    svg = _svg(figure)
    pyplot.close(figure)
    return svg


def _layer_figure(per_layer: dict[str, Any], top: int = 15) -> str:
    pyplot = require("matplotlib.pyplot", "edgepipe profile --report")
    rows = per_layer["layers"][:top][::-1]
    figure, axes = pyplot.subplots(figsize=(10, 0.3 * len(rows) + 1))
    axes.barh([row["name"][-48:] for row in rows], [row["mean_ms"] for row in rows], color="#ed7d31")
    axes.set(title=f"slowest layers ({per_layer['source']})", xlabel="mean ms per inference")
    svg = _svg(figure)
    pyplot.close(figure)
    return svg


def _power_figure(energy: dict[str, Any]) -> str:
    pyplot = require("matplotlib.pyplot", "edgepipe profile --report")
    seconds, watts = zip(*energy["power_trace_w"], strict=True)
    figure, axes = pyplot.subplots(figsize=(10, 2.8))
    axes.plot(seconds, watts, color="#70ad47")
    axes.axhline(energy["idle_power_w"], linestyle=":", color="grey")
    axes.set(title=f"power while inferring ({energy['meter']}; idle dotted)", xlabel="s", ylabel="W")
    svg = _svg(figure)
    pyplot.close(figure)
    return svg


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def write_html_report(profile: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on build hosts and devices
    summary = profile["latency_ms"]["summary"]
    device, runtime, energy = profile["device"], profile["runtime"], profile["energy"]
    facts = [("model", profile["bundle"]["model"]), ("target", profile["bundle"]["target"]),
             ("runtime", f"{runtime['name']} {runtime.get('version', '')}"),
             ("device", f"{device.get('cpu', '?')} ({device.get('logical_cpus', '?')} CPUs, "
                        f"{device.get('os', '?')})"
                        + (f", over SSH {device['remote']}" if device.get("remote") else "")),
             ("runs", f"{profile['settings']['runs']} after {profile['settings']['warmup']} warm-up, "
                      f"threads {profile['settings']['threads']}"),
             ("latency", " · ".join(f"{k} {summary[k]:.3f} ms"
                                    for k in ("p50", "p90", "p99", "mean", "std"))),
             ("throughput", f"{summary['throughput_per_s']:.1f} inferences/s"),
             ("cold start", f"{profile['cold_start_ms']['total']:.1f} ms (load + first inference)"),
             ("peak RSS", f"{profile['memory']['peak_rss_mb']:.0f} MiB")]
    if energy.get("available"):
        facts.append(("energy", f"{1000 * energy['joules_per_inference']:.3f} mJ/inference "
                                f"({energy['meter']}, {energy['mean_active_power_w']:.2f} W active)"))
    else:
        facts.append(("energy", f"unavailable: {energy.get('reason', '')}"))
    title = f"{profile['bundle']['model']} on {profile['bundle']['target']}"
    sections = [f"<h1>{html.escape(title)}</h1>", _table(facts), "<h2>Latency</h2>",
                _latency_figures(profile["latency_ms"]["samples"])]
    per_layer = profile.get("per_layer") or {}
    if per_layer.get("layers"):
        sections += ["<h2>Per layer</h2>", _layer_figure(per_layer)]
    else:
        sections.append("<p>Per-layer times: not measured (profile with <code>--layers</code>).</p>")
    if energy.get("power_trace_w"):
        sections += ["<h2>Power</h2>", _power_figure(energy)]
    else:
        sections.append("<p>Power trace: no energy meter ran.</p>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}th,td{padding:4px 12px;text-align:left;"
             "border-bottom:1px solid #ddd}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>edgepipe profile</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n")
    path.write_text(page, encoding="utf-8")
    return path
