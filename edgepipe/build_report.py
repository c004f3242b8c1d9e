"""report.md: the build as a person reads it (stage table, parity, sizes, warnings).

Rendered twice from one manifest: into the bundle without what the build measured (times,
in-build latencies), so the flashable folder is reproducible byte for byte, and into
`<bundle>.build/` with them.
"""

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


def _timed(row: dict[str, Any], key: str, fmt: str) -> str:
    """A measured value as a trailing table cell; nothing where the report leaves timings out."""
    return f" {_metric(row.get(key), fmt)} |" if key in row else ""


def _pass_table(stage: dict[str, Any]) -> list[str]:
    """The per-pass table of a stage that runs graph passes (fuse)."""
    passes = stage["metrics"].get("passes")
    if not passes:
        return []
    timed = any("seconds" in row for row in passes)
    lines = ["", f"### Passes of `{stage['stage']}` ({stage['metrics']['nodes_before']} → "
             f"{stage['metrics']['nodes_after']} nodes)", "",
             "| pass | rewrites | nodes | op change | max abs diff | cosine |"
             + (" seconds |" if timed else ""),
             "|---|---:|---|---|---:|---:|" + ("---:|" if timed else "")]
    for row in passes:
        if row["skipped"]:
            lines.append(f"| {row['pass']} | skipped | | | | |" + (" |" if timed else ""))
            continue
        if row.get("undone"):
            lines.append(f"| {row['pass']} | undone: {row['undone']} | | | | |"
                         + _timed(row, "seconds", ".3f"))
            continue
        change = ", ".join(f"{op} {delta:+d}" for op, delta in row["op_change"].items()) or "—"
        lines.append(f"| {row['pass']} | {row['rewrites']} | {row['nodes_before']} → "
                     f"{row['nodes_after']} | {change} | {row['max_abs_diff']:.3g} | "
                     f"{row['min_cosine']:.6f} |" + _timed(row, "seconds", ".3f"))
    lines.append("")
    lines.append("Parity of each pass is against the stage's input model.")
    return lines


def _score(scores: dict[str, Any], key: str, fmt: str) -> str:
    value = scores.get(key)
    return value if isinstance(value, str) else _metric(value, fmt)


def _quantize_section(stage: dict[str, Any]) -> list[str]:
    """Accuracy before/after, fallback and the worst layers of an int8 stage."""
    m = stage["metrics"]
    if stage["stage"] != "quantize" or "evaluation" not in m:
        return []
    evaluation, calibration = m["evaluation"], m["calibration"]
    lines = ["", "### int8 quantization", ""]
    if calibration["random"]:
        lines += ["**Calibrated on random data (`--calib random`): the int8 model's accuracy on real "
                  "inputs is unknown.**", ""]
    lines += [
        f"Scheme: {m['scheme']} ({m['model_type']}); activations {m['activations']}, weights "
        f"{m['weights']}; calibration {calibration['method']} on {calibration['origin']}. "
        f"Size {_size(m['size_bytes']['float'])} → {_size(m['size_bytes']['int8'])}."
        + (f" {m['weight_bits'][0].upper()}{m['weight_bits'][1:]}." if m.get("weight_bits") else ""),
        "",
        f"Scored on {evaluation['origin']}:",
        "",
    ]
    # A detector is judged by mAP (its raw head has no top-1); everything else by top-1/top-k.
    detector = evaluation["float"].get("map50_95") is not None
    task = (("mAP@0.5", "map50"), ("mAP@0.5:0.95", "map50_95")) if detector else \
        (("top-1 %", "top1"), ("top-5 %", "top5"))
    lines += [f"| model | {task[0][0]} | {task[1][0]} | metric | mean cosine | min cosine | SQNR dB | "
              "top-1 agreement |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, key in (("float", "float"), ("int8, all layers", "int8_before_fallback"),
                       ("int8, shipped", "int8")):
        s = evaluation[key]
        lines.append(f"| {label} | {_score(s, task[0][1], '.2f')} | {_score(s, task[1][1], '.2f')} | "
                     f"{_score(s, 'metric', '.4g')} | {_score(s, 'mean_cosine', '.5f')} | "
                     f"{_score(s, 'min_cosine', '.5f')} | {_score(s, 'sqnr_db', '.1f')} | "
                     f"{_score(s, 'top1_agreement', '.3f')} |")
    if m.get("detection"):
        d = m["detection"]
        kept = d.get("kept_float") or []
        what = "the last convolutions of the box and class branches and the decode after them"
        lines += ["", f"Detector ({d['head']} head, {d['classes']} classes): " + {
            "qdq": f"{len(kept)} head nodes kept in float by the detection-aware scheme ({what}).",
            "pt2e": f"the detection-aware scheme leaves {what} float in litert-torch's PT2E quantization.",
        }.get(d.get("float_head", "none"), "every layer quantized (the converter cannot keep layers "
                                            "float, or [detect] keep_head_float = false).")]
    search = calibration.get("search")
    if search:
        tried = ", ".join(f"{method} {_metric(cosine, '.5f')}" for method, cosine in search["cosine"].items())
        lines += ["", f"Ranges (`method = \"auto\"`): **{search['chosen']}**, the best {search['probe']} "
                      f"of {tried}."]
    corrected = m.get("bias_correction")
    if corrected and corrected.get("layers"):
        lines += ["", f"Bias correction: {corrected['layers']} layers' int32 biases corrected for the mean "
                      f"shift of their rounded weights (input means from {corrected['samples']} calibration "
                      f"samples; largest shift {corrected['largest_shift']:.4g})."]
    if m.get("evaluation_overlap"):
        lines += ["", f"Calibration and evaluation data: {m['evaluation_overlap']}."]
    speed = m.get("int8_speed") or m.get("estimated_int8_speed")
    if speed and speed["measured"]:
        host = speed["host"]
        lines += ["", f"Speed on the target's runtime, on this host ({host.get('cpu')}, "
                      f"{', '.join(host.get('cpu_features') or ['no AVX-512/VNNI/AMX'])}; "
                      f"{speed['method']}): "
                      f"float {speed['float_ms']:.4f} ms → int8 {speed['int8_ms']:.4f} ms, "
                      f"**{speed['speedup']:.2f}x**"
                      + (f" (per pair: {', '.join(f'{r:.2f}x' for r in speed['pair_speedups'])})"
                         if speed.get("pair_speedups") else "") + "."]
    elif speed and speed.get("estimated"):
        device = speed["device"]
        lines += ["", f"Speed **estimated**, not measured ({speed['reason']}): {speed['method']} "
                      f"({device['target']}: {device['int8_tops']:g} int8 TOPS, "
                      f"{device['fp16_tflops']:g} fp16 and {device['fp32_tflops']:g} fp32 TFLOPS, "
                      f"{device['memory_gbps']:g} GB/s): "
                      f"fp16 engine {speed['fp16_ms']:.4g} ms → int8 engine {speed['int8_ms']:.4g} ms, "
                      f"**{speed['speedup']:.2f}x** ({speed['int8_layers']} weighted layers int8, "
                      f"{speed['float_layers']} float)."]
    elif speed:
        lines += ["", f"Speed not measured: {speed['reason']}."]
    budget = m["budget"]
    lines += ["", f"Budget: top-1 drop ≤ {budget['max_top1_drop']:g} points, mAP@0.5:0.95 drop ≤ "
              f"{budget.get('max_map_drop', 1):g} points, metric drop ≤ "
              f"{budget['max_metric_drop']:g}, mean cosine ≥ {budget['min_cosine']:g}, speed-up over "
              f"float ≥ {budget.get('min_speedup', 0):g}x; on exceed: {budget['on_exceed']}."]
    if m["fallback"]:
        estimated = bool(speed and speed.get("estimated"))
        how = ("estimated for the target's GPU (see above) at every step" if estimated
               else "timed only for steps within the accuracy budget")
        task, key = ("mAP@0.5:0.95", "map50_95_after") if detector else ("top-1 agreement",
                                                                          "top1_agreement_after")
        lines += ["", "Fallback steps, each keeping one more tensor's nodes in float (accuracy on the "
                      f"evaluation data; speed-up over float {how}):", "",
                  f"| step | tensor | local SQNR dB | nodes kept in float | mean cosine | {task} | "
                  "speed-up |", "|---:|---|---:|---|---:|---:|---:|"]
        for step, row in enumerate(m["fallback"], 1):
            lines.append(f"| {step} | `{row['tensor']}` | {row['sqnr_db']} | {', '.join(row['nodes'])} | "
                         f"{_metric(row['mean_cosine_after'], '.5f')} | "
                         f"{_score(row, key, '.3f' if not detector else '.2f')} | "
                         f"{_score(row, 'estimated_speedup' if estimated else 'speedup', '.2f')} |")
    if m["worst_layers"]:
        lines += ["", "Worst quantized tensors (local SQNR: the tensor against its own int8 copy):", "",
                  "| tensor | kind | scale | zero point | SQNR dB |", "|---|---|---:|---:|---:|"]
        for row in m["worst_layers"]:
            lines.append(f"| `{row['tensor']}` | {row['kind']} | {row['scale']:.4g} | {row['zero_point']} | "
                         f"{row['sqnr_db']} |")
    return lines


def _count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f}"


def _prune_section(stage: dict[str, Any]) -> list[str]:
    """Each step of pruning with its accuracy, latency, MACs and size, and the scan table."""
    if stage["stage"] != "prune":
        return []
    m = stage["metrics"]
    timed = any("latency_ms" in step for step in m["steps"])
    lines = ["", f"### Pruning ({m['method']})", "", f"{m['speed'].capitalize()}.", "",
             f"Scored on {m['evaluation']['origin']}"
             + (f"; latency: {m['latency_note']}." if timed else "."), "",
             "| model | top-1 % | metric | mean cosine | MACs | params | size | compressed "
             "| weight sparsity |" + (" latency ms |" if timed else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if timed else "")]
    for step in m["steps"]:
        s = step["scores"]
        lines.append(f"| {step['model']} | {_score(s, 'top1', '.2f')} | {_score(s, 'metric', '.4g')} | "
                     f"{_score(s, 'mean_cosine', '.5f')} | "
                     f"{_count(step['macs'])} | {_count(step['params'])} | {_size(step['size_bytes'])} | "
                     f"{_size(step['compressed_bytes'])} | {step['weight_sparsity']:.1%} |"
                     + _timed(step, "latency_ms", ".4f"))
    ratios = [f"MACs × {m['macs_ratio']}" if m.get("macs_ratio") is not None else "",
              f"latency × {m['latency_ratio']}" if m.get("latency_ratio") is not None else ""]
    lines += ["", "Shipped vs unpruned: " + ", ".join(r for r in ratios if r) + "."]
    if m.get("finetune"):
        f = m["finetune"]
        loss = "" if f["loss_first"] is None else f", loss {f['loss_first']:.4g} → {f['loss_last']:.4g}"
        lines += ["", f"Distilled from the unpruned model: {f['epochs']} epochs, {f['steps']} steps, "
                      f"lr {f['lr']:g}, T {f['temperature']:g}, on {f['data']} "
                      f"({'with' if f['labels_used'] else 'without'} labels){loss}"
                      + (f", {f['seconds']:.1f} s." if "seconds" in f else ".")]
    budget = m["budget"]
    lines += ["", f"Budget vs unpruned: top-1 drop ≤ {budget['max_top1_drop']:g} points, metric drop ≤ "
              f"{budget['max_metric_drop']:g}, mean cosine ≥ {budget['min_cosine']:g}; on exceed: "
              f"{budget['on_exceed']}. Attempts: "
              + "; ".join(f"{v['candidate']} → {v['violations'][0] if v['violations'] else 'ok'}"
                          for v in m.get("verdicts", [])) + "."]
    if m.get("channels"):
        before, after = m["channels"]["before"], m["channels"]["after"]
        changed = [f"{name} {before[name]}→{after.get(name, '?')}" for name in before
                   if after.get(name) != before[name]]
        lines += ["", "Channels: " + (", ".join(changed) if changed else "none removed") + "."]
    if m.get("scan"):
        scan = m["scan"]
        ratios = scan["ratios"]
        lines += ["", f"Sensitivity scan (each group pruned alone, no fine-tuning, {scan['primary']} "
                      f"drop vs unpruned; tolerance {scan['tolerance']:g}; ratio chosen in bold):", "",
                  "| layer group | " + " | ".join(f"{r:g}" for r in ratios) + " | chosen |",
                  "|---|" + "---:|" * (len(ratios) + 1)]
        by_layer: dict[str, dict[float, float]] = {}
        for row in scan["rows"]:
            by_layer.setdefault(row["layer"], {})[row["ratio"]] = row["drop"]
        for layer, drops in by_layer.items():
            chosen = scan["chosen"].get(layer, 0.0)
            cells = [(f"**{drops[r]:.3g}**" if r == chosen else f"{drops[r]:.3g}") for r in ratios]
            lines.append(f"| `{layer}` | " + " | ".join(cells) + f" | {chosen:g} |")
    return lines


def _engine_section(manifest: dict[str, Any]) -> list[str]:
    """TensorRT: what the device builds, with which flags, and what was checked here."""
    engine = manifest["backend"].get("engine")
    if not engine:
        return []
    from edgepipe.trt.build_script import trtexec_args
    from edgepipe.trt.plan import EnginePlan, ShapeRange

    fields = {k: v for k, v in engine.items() if k in EnginePlan.__dataclass_fields__}
    fields["shapes"] = {name: ShapeRange(**{k: tuple(v) for k, v in r.items()})
                        for name, r in engine["shapes"].items()}
    fields["device_files"] = tuple(engine["device_files"])
    checks = manifest["backend"]["runtime_reports"].get("prechecks", {})
    gpu = engine["compute_capability"] or "the building GPU's"
    dla = "GPU only" if engine["dla_core"] is None else f"DLA core {engine['dla_core']}"
    shipped = any(entry["path"] == engine["engine"] for entry in manifest["files"])
    status = ("built on the build host and shipped" if engine.get("built", shipped) else
              "not built yet: the device builds it (`bash build_engine.sh` or "
              "`python3 run.py --build-engine`)")
    return ["", "## TensorRT engine", "",
            f"TensorRT {engine['tensorrt_version']}, compute capability {gpu}, {dla}, precision "
            f"{engine['precision']}" + (f" ({engine['int8_mode']})" if engine["int8_mode"] else "")
            + f"; `{engine['engine']}` {status}.", "",
            f"Pre-checks passed on this host: {checks.get('nodes', '?')} nodes, "
            f"{checks.get('op_types', '?')} op types, opset {checks.get('opset', '?')}, "
            f"{checks.get('qdq_nodes', 0)} Q/DQ nodes (all symmetric int8).", "",
            "```sh", "trtexec " + " ".join(trtexec_args(EnginePlan(**fields))), "```"]


def render(manifest: dict[str, Any], in_bundle: bool = False) -> str:
    """The report; `in_bundle`: the bundle's own copy, which leaves out what the build measured
    and says where to find it."""
    model, target, profile = manifest["model"], manifest["target"], manifest["profile"]
    parity = manifest["parity"]
    timed = all("seconds" in stage for stage in manifest["stages"])
    lines = [
        f"# {model['name']} for {target['name']}",
        "",
        f"Built by edgepipe {manifest['tools']['edgepipe']} on {manifest['build']['time']} "
        f"with profile `{profile['name']}` and backend `{manifest['backend']['name']}`.",
        "",
        f"Source: `{model['source']['spec']}` ({model['source']['kind']}, "
        f"sha256 `{model['source']['sha256'][:16]}…`).",
        "",
        *(["Times and in-build latency estimates differ on every build, so they are not in the "
           "bundle: on the build host, see `report.md` and `build.json` in the `<bundle>.build/` "
           "folder beside the bundle's.", ""] if in_bundle else []),
        "## Stages",
        "",
        "| stage | output | max abs diff | cosine | top-1 agreement |" + (" seconds |" if timed else ""),
        "|---|---|---:|---:|---:|" + ("---:|" if timed else ""),
    ]
    for stage in manifest["stages"]:
        p = stage["parity"] or {}
        lines.append(
            f"| {stage['stage']} | `{stage['output']}` | "
            f"{_metric(p.get('max_abs_diff'), '.3g')} | {_metric(p.get('min_cosine'), '.6f')} | "
            f"{_metric(p.get('min_top1_agreement'), '.3f')} |" + _timed(stage, "seconds", ".2f")
        )
    for stage in manifest["stages"]:
        lines += _pass_table(stage)
        lines += _prune_section(stage)
        lines += _quantize_section(stage)
    budget = manifest["parity_budget"]
    if budget["atol"] is None:
        budget_line = ("Budget: int8 accuracy is judged by the quantize stage's budget on its evaluation "
                       "data (above); stages after it must keep cosine ≥ "
                       f"{budget['min_cosine']:g} against the quantize stage's output.")
    else:
        budget_line = (f"Budget: every element within atol {budget['atol']:g} + rtol {budget['rtol']:g} "
                       f"· |ref| (worst: {parity['max_tolerance_ratio']:.3g}× the tolerance), cosine ≥ "
                       f"{budget['min_cosine']:g}.")
    lines += _engine_section(manifest)
    if manifest.get("auto"):
        auto = manifest["auto"]
        lines += ["", f"## Chosen by measurement (`--profile {auto['profile']}`)", "",
                  f"Shipped **{auto['chosen']}**: "
                  f"{auto.get('reason', 'the fastest within its budget on the build host')}. "
                  f"Each candidate was timed in fresh processes, {auto['timing']['rounds']} interleaved "
                  f"rounds of {auto['timing']['runs']} runs.", "",
                  "| candidate | status | cosine vs source | why |" + (" median latency |" if timed else ""),
                  "|---|---|---:|---|" + ("---:|" if timed else "")]
        for row in auto["candidates"]:
            latency = "—" if row.get("median_ms") is None else f"{row['median_ms']:.3f} ms"
            lines.append(f"| {row['profile']} | {row['status']} | {_metric(row.get('cosine'), '.6f')} | "
                         f"{row.get('reason', '')} |" + (f" {latency} |" if timed else ""))
    lines += [
        "",
        "## Parity of the deployed model",
        "",
        f"Compared with the source model on {parity['reference_inputs']}.",
        budget_line,
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
        *(["python3 run.py --build-engine                 # TensorRT: build model.engine here first"]
          if manifest["backend"].get("engine") else []),
        "```",
        "",
        "Tool versions: " + ", ".join(f"{k} {v}" for k, v in manifest["tools"].items()) + ".",
        "",
    ]
    return "\n".join(lines)
