"""ONNX Runtime: the one place that turns a target's `[runtime]` table into session options.

The build's lowering (offline optimization), its parity checks, `--profile auto`,
`edgepipe profile` and the bundle's run.py all create sessions through
`session_options` and `open_session`, so what is checked is what the device runs.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendError, BadInputError, first_line
from .base import Feed, Runner, Spec

LEVELS = ("disabled", "basic", "extended", "all")
_UNSUPPORTED_OP = re.compile(
    r"Could not find an implementation for (?P<op>[\w.]+)\((?P<ver>-?\d+)\) node with name '(?P<node>[^']*)'"
    r"|(?P<op2>[\w.:]+)\((?P<ver2>-?\d+)\) is not a registered function/op"
)


_RUNNING_NODE = re.compile(r"running (?P<op>\w+) node\. Name:'(?P<node>[^']*)'")


def run_failure(exc: BaseException) -> str:
    """ORT nests a failure once per enclosing If/Loop/Scan ("... running If node ... Status Message:
    ... running Reshape node ... Status Message: <the reason>"); the innermost node and reason are
    what the user needs, and they sit past any sensible line length."""
    text = str(exc)
    nodes = list(_RUNNING_NODE.finditer(text))
    if not nodes or "Status Message:" not in text:
        return first_line(exc)
    reason = text.rsplit("Status Message:", 1)[1].strip()
    reason = reason.rsplit(" was false. ", 1)[-1]  # past ORT's source location and failed check
    node = nodes[-1]
    return first_line(f"{node['op']} node '{node['node'] or 'unnamed'}': {reason}")


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise BackendError("this model needs onnxruntime: pip install onnxruntime") from None
    # Fatal records only, also from the process-wide logger that sessions fall back on before their own
    # options apply: ORT's coloured multi-line records must not surround our one-line errors.
    onnxruntime.set_default_logger_severity(4)
    return onnxruntime


def session_options(settings: Mapping[str, Any], *, threads: int | None = None, level: str | None = None):
    """SessionOptions from the target's settings; `threads`/`level` override them (a user's
    --threads; the build's 'disabled' level to run ONNX exactly as written)."""
    ort = import_ort()
    levels = dict(zip(LEVELS, (ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                               ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                               ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                               ort.GraphOptimizationLevel.ORT_ENABLE_ALL), strict=True))
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[level or settings["graph_optimization_level"]]
    options.intra_op_num_threads = settings["threads"] if threads is None else threads
    options.inter_op_num_threads = settings["inter_op_threads"]
    options.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if settings["execution_mode"] == "sequential"
                              else ort.ExecutionMode.ORT_PARALLEL)
    options.log_severity_level = 4  # fatal only: errors reach the user as our one-line message
    return options


def usable_providers(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    """(providers to use, requested ones this onnxruntime lacks); the CPU provider at worst."""
    available = set(import_ort().get_available_providers())
    usable = [p for p in requested if p in available]
    return usable or ["CPUExecutionProvider"], [p for p in requested if p not in available]


def open_session(model: Path | bytes, options, providers: Sequence[str], name: str):
    """A session from a file or serialized bytes; ORT's failures as one line."""
    ort = import_ort()
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                    providers=list(providers))
    except Exception as exc:
        match = _UNSUPPORTED_OP.search(str(exc))
        if match:
            op = match["op"] or match["op2"]
            version = match["ver"] or match["ver2"]
            node = f" (node '{match['node']}')" if match["node"] else ""
            raise BadInputError(f"{name}: op {op} (opset {version}){node} is not supported by "
                                f"onnxruntime {ort.__version__} with {', '.join(providers)}") from None
        raise BackendError(f"onnxruntime could not load {name}: {first_line(exc)}") from None


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, model: Path | bytes, inputs: Sequence[Spec], settings: Mapping[str, Any], *,
                 threads: int | None = None, level: str | None = None, name: str | None = None) -> None:
        super().__init__(inputs, name or (model.name if isinstance(model, Path) else "model"))
        self.model, self.settings, self.threads, self.level = model, dict(settings), threads, level
        self._session = None

    def _options(self):
        return session_options(self.settings, threads=self.threads, level=self.level)

    def _activate(self) -> None:
        providers, missing = usable_providers(self.settings["providers"])
        options = self._options()
        self._session = open_session(self.model, options, providers, self.name)
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.runtime = {"name": "onnxruntime", "version": import_ort().__version__,
                        "providers": self._session.get_providers(),
                        "threads": options.intra_op_num_threads,
                        "inter_op_threads": options.inter_op_num_threads,
                        "graph_optimization_level": self.level or self.settings["graph_optimization_level"],
                        "execution_mode": self.settings["execution_mode"]}
        if missing:
            self.warnings.append(f"{', '.join(missing)} not available in this onnxruntime: running on "
                                 f"{', '.join(providers)}")

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._outputs, dict(feed))
        except Exception as exc:
            raise BackendError(f"onnxruntime failed running {self.name}: {run_failure(exc)}") from None
        return dict(zip(self._outputs, values, strict=True))

    def layer_times(self, feed: Feed, runs: int) -> dict[str, Any]:
        """Per-node kernel times from ONNX Runtime's own profiler, in a separate session so the
        timed runs carry no profiling overhead."""
        with tempfile.TemporaryDirectory() as folder:
            options = self._options()
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / "ort")
            session = open_session(self.model, options, self._session.get_providers(), self.name)
            for _ in range(runs):
                session.run(None, dict(feed))
            events = json.loads(Path(session.end_profiling()).read_text())
        totals: dict[str, Any] = {}
        for event in events:
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                name = event["args"].get("node_name", event["name"].removesuffix("_kernel_time"))
                entry = totals.setdefault(name, {"type": event["args"].get("op_name", ""),
                                                 "exec_type": event["args"].get("provider", ""), "us": 0.0})
                entry["us"] += event["dur"]
        return {"source": "onnxruntime profiler (kernel time)", "runs": runs, "totals": totals}
