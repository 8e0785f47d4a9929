"""``pcea bench``: throughput and memory of the models, attention layers, point ops and trained weights.

Every figure is the median of ``repeats`` timed runs after ``warmup`` untimed
ones. Each model or attention setting runs in a fresh child process (unless
``isolate=False``), so its peak memory is its own and one setting's heap does
not flatter the next; ``rounds > 1`` runs all settings again in the same order
and keeps the median over rounds, which evens out a shared machine's noise.

Memory: on the CPU the peak resident set size of the process (``VmHWM`` from
``/proc/self/status``, reset through ``/proc/self/clear_refs`` before each
phase; Linux only), on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pcea import ops
from pcea.api import load_model
from pcea.atomic import write_atomic
from pcea.bench_reference import ReferencePCT
from pcea.engine.distributed import resolve_device
from pcea.errors import PceaError, check_positive_int
from pcea.fast import accelerate, enabled, sampling
from pcea.layers import ExternalAttention, OffsetAttention, OffsetBlock, SelfAttention
from pcea.model import build_model
from pcea.precision import autocast
from pcea.runtime import describe_allocator
from pcea.weights import BUILTIN, is_builtin

__all__ = ["BenchConfig", "run_bench", "format_report", "machine_info"]

MODELS = ("pcea", "pct", "pct-sa")
ATTENTION = ("external", "offset", "self")
REFERENCE = "reference"  # the ReferencePCT baseline's name in the results
SECTIONS = ("models", "attention", "ops", "weights")
PRECISIONS = ("fp32", "bf16")  # bf16: the forward under torch.autocast(dtype=torch.bfloat16)
_RESULT_TAG = "PCEA_BENCH_RESULT "


@dataclass
class BenchConfig:
    """What ``pcea bench`` measures (one field per command-line option)."""

    models: Sequence[str] = ("pcea",)
    batch_size: int = 32
    points: Sequence[int] = (1024,)
    attention: Sequence[str] = ATTENTION
    attention_batch: int = 8
    attention_dim: int = 256
    fps: Sequence[tuple[int, int, int]] = ((32, 1024, 512), (32, 4096, 1024), (8, 8192, 2048))
    knn_k: int = 32
    device: str = "cpu"
    threads: int | None = None
    repeats: int = 5
    warmup: int = 2
    rounds: int = 1
    reference: bool = False
    precision: Sequence[str] = ("fp32",)  # "fp32" and/or "bf16" (autocast) for the models
    train: bool = True
    isolate: bool = True
    sections: Sequence[str] = field(default=("models", "attention", "ops"))  # and/or "weights"
    weights: Sequence[str] = BUILTIN  # the "weights" section: built-in names or checkpoint files

    def validate(self) -> None:
        unknown = [m for m in self.models if m not in MODELS]
        if unknown:
            raise PceaError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
        unknown = [a for a in self.attention if a not in ATTENTION]
        if unknown:
            raise PceaError(
                f"unknown attention kind(s) {', '.join(unknown)}; choose from {', '.join(ATTENTION)}"
            )
        counts = [("batch_size", self.batch_size), ("attention_batch", self.attention_batch),
                  ("repeats", self.repeats), ("rounds", self.rounds)]
        for name, value in [*(("points", n) for n in self.points), *counts]:
            check_positive_int(name, value)
        too_small = [n for n in self.points if n < 512]
        if too_small and "models" in self.sections:
            raise PceaError(f"the models need at least 512 points per cloud, got {too_small}")
        unknown = [p for p in self.precision if p not in PRECISIONS]
        if unknown or not self.precision:
            raise PceaError(f"unknown precision(s) {', '.join(unknown) or '(none)'}; choose from fp32, bf16")
        unknown = [name for name in self.sections if name not in SECTIONS]
        if unknown or not self.sections:
            raise PceaError(f"unknown section(s) {', '.join(unknown) or '(none)'}; "
                            f"choose from {', '.join(SECTIONS)}")
        if "weights" in self.sections:
            missing = [w for w in self.weights if not is_builtin(w) and not os.path.exists(w)]
            if missing or not self.weights:
                raise PceaError(f"no such weights {', '.join(missing) or '(none)'}: give built-in names "
                                f"({', '.join(BUILTIN)}) or checkpoint files")
        for b, n, m in self.fps:
            if not 1 <= m <= n or b < 1:
                raise PceaError(f"FPS setting {b}x{n}:{m} needs 1 <= m <= N")
        self.device = str(resolve_device(self.device))  # the check of every command; "auto" -> its choice


def machine_info(device: str = "cpu") -> dict:
    """The machine a benchmark ran on: CPU model, cores, threads, versions, allocator."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "allocator": describe_allocator(),
        "device": device,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ---------------------------------------------------------------- measurement


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # "5" resets the peak RSS (VmHWM) to the current RSS; Linux >= 4.0
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status ("VmHWM", "VmRSS") in MB, or None without /proc."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # the kernel reports kB
    except OSError:
        pass
    return None


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource  # lifetime peak: an upper bound where /proc is missing

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024


def _rss_mb() -> float:
    rss = _proc_status_mb("VmRSS")
    return float("nan") if rss is None else rss


def _cpu_seconds() -> tuple[float, float]:
    """User and system CPU time of this process so far (all threads)."""
    times = os.times()
    return times.user, times.system


def _timed(
    fn: Callable[[], object], *, repeats: int, warmup: int, device: str
) -> tuple[float, float, tuple[float, float]]:
    """Median seconds per call, the peak memory (MB) of the first call, and the
    mean (user, system) CPU seconds per timed call: on a shared machine CPU time
    is steadier than wall time, and the system share shows what the allocator costs.
    """
    _reset_peak(device)
    fn()  # the first call also warms up; its peak is the one reported
    _sync(device)
    peak = _peak_mb(device)
    for _ in range(max(0, warmup - 1)):
        fn()
    _sync(device)
    times = []
    user0, sys0 = _cpu_seconds()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    user1, sys1 = _cpu_seconds()
    return statistics.median(times), peak, ((user1 - user0) / repeats, (sys1 - sys0) / repeats)


def _build(name: str, num_points: int, overrides: dict | None = None) -> nn.Module:
    """The reference, or a pcea model as built (plain: :func:`pcea.fast.accelerate` is the caller's)."""
    if name == REFERENCE:
        return ReferencePCT()
    return build_model(name, num_points=num_points, **(overrides or {}))


def _train_step(model: nn.Module, points: torch.Tensor, labels: torch.Tensor, *, bf16: bool,
                device: str) -> Callable[[], None]:
    """One SGD step on a fixed batch, the training figure that every section times.

    Args:
        model: put in training mode here.
        points: (B, N, 3) clouds.
        labels: (B,) classes.
        bf16: the forward pass under bf16 autocast (the loss stays float32).
        device: where the model runs.
    """
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            logits = model(points)  # (B, num_classes)
        nn.functional.cross_entropy(logits.float(), labels).backward()
        optimizer.step()

    return step


def measure_model(case: dict) -> dict:
    """Inference and training-step throughput of one model setting.

    ``infer`` and ``train`` time the model as users get it (accelerated, :func:`pcea.fast.accelerate`;
    the reference as written); ``plain`` times a pcea model's inference as written in
    :mod:`pcea.model`, without the acceleration.
    """
    device, batch, num_points = case["device"], case["batch_size"], case["points"]
    repeats, warmup = case["repeats"], case["warmup"]
    precision = case.get("precision", "fp32")
    torch.manual_seed(0)
    model = _build(case["model"], num_points, case.get("overrides")).to(device)  # overrides: tests
    points = torch.randn(batch, num_points, 3, device=device)
    row = {"model": case["model"], "precision": precision, "batch_size": batch, "points": num_points,
           "params": sum(p.numel() for p in model.parameters()), "rss_before_mb": _rss_mb()}

    model.eval()
    with torch.no_grad(), autocast(device, precision == "bf16"):
        if case["model"] != REFERENCE:
            seconds, peak, cpu = _timed(lambda: model(points), repeats=repeats, warmup=warmup, device=device)
            row.update(plain_clouds_s=batch / seconds, plain_ms=seconds * 1e3, plain_peak_mb=peak,
                       plain_user_ms=cpu[0] * 1e3, plain_sys_ms=cpu[1] * 1e3)
            accelerate(model)
        seconds, peak, cpu = _timed(lambda: model(points), repeats=repeats, warmup=warmup, device=device)
        row.update(infer_clouds_s=batch / seconds, infer_ms=seconds * 1e3, infer_peak_mb=peak,
                   infer_user_ms=cpu[0] * 1e3, infer_sys_ms=cpu[1] * 1e3)

    if case["train"]:
        num_classes = model.config.num_classes if hasattr(model, "config") else 40
        labels = torch.randint(0, num_classes, (batch,), device=device)
        step = _train_step(model, points, labels, bf16=precision == "bf16", device=device)
        seconds, peak, cpu = _timed(step, repeats=repeats, warmup=warmup, device=device)
        row.update(train_clouds_s=batch / seconds, train_ms=seconds * 1e3, train_peak_mb=peak,
                       train_user_ms=cpu[0] * 1e3, train_sys_ms=cpu[1] * 1e3)
    return row


def measure_weights(case: dict) -> dict:
    """Inference of trained weights as ``pcea classify`` and :func:`pcea.load_model` run them:
    accelerated, on a batch of random clouds of the size on their card (``config.num_points``).

    Their cost is the figure to weigh against their accuracy: two weights of the same
    preset differ in speed only through the input size and the centre counts they were trained with.
    """
    device, batch = case["device"], case["batch_size"]
    precision = case.get("precision", "fp32")
    model = load_model(case["weights"], device=device)
    num_points = model.config.num_points
    torch.manual_seed(0)
    points = torch.randn(batch, num_points, 3, device=device)  # (B, N, 3)
    with torch.no_grad(), autocast(device, precision == "bf16"):
        seconds, peak, cpu = _timed(lambda: model(points), repeats=case["repeats"], warmup=case["warmup"],
                                    device=device)
    return {"weights": case["weights"], "attention": model.config.attention, "precision": precision,
            "batch_size": batch, "points": num_points, "centers": list(model.config.centers),
            "infer_ms": seconds * 1e3, "ms_per_cloud": seconds * 1e3 / batch,
            "infer_clouds_s": batch / seconds,
            "infer_peak_mb": peak, "infer_user_ms": cpu[0] * 1e3, "infer_sys_ms": cpu[1] * 1e3}


def measure_interleaved(case: dict) -> dict:
    """Each model against the reference in one process, calls alternating A, B, A, B.

    On a shared machine the load changes from one setting to the next, so the
    speed ratio is only fair when both models see the same moments. The pcea
    models run accelerated, as :func:`pcea.load_model` and ``pcea train`` users get them.
    """
    device, batch, num_points = case["device"], case["batch_size"], case["points"]
    torch.manual_seed(0)
    points = torch.randn(batch, num_points, 3, device=device)
    labels = torch.randint(0, 40, (batch,), device=device)
    precisions = list(case.get("precisions", ["fp32"]))
    # One entry per (model, precision); a model's entries share its weights.
    entries = [(name, p) for name in list(case["models"]) + [REFERENCE] for p in precisions]
    models = {name: _build(name, num_points).to(device) for name in dict(entries)}
    for name, model in models.items():
        if name != REFERENCE:
            accelerate(model)

    def infer(name: str, precision: str) -> Callable[[], object]:
        model = models[name].eval()

        def run() -> None:
            with torch.no_grad(), autocast(device, precision == "bf16"):
                model(points)

        return run

    def train(name: str, precision: str) -> Callable[[], object]:
        return _train_step(models[name], points, labels, bf16=precision == "bf16", device=device)

    rows = {entry: {"model": entry[0], "precision": entry[1], "batch_size": batch, "points": num_points}
            for entry in entries}
    phases = [("infer", infer)] + ([("train", train)] if case["train"] else [])
    for phase, make in phases:
        runs = {entry: make(*entry) for entry in entries}
        times: dict[tuple, list[float]] = {entry: [] for entry in entries}
        for _ in range(max(1, case["warmup"])):
            for run in runs.values():
                run()
        for _ in range(case["repeats"]):
            for entry, run in runs.items():  # A, B, A, B
                start = time.perf_counter()
                run()
                _sync(device)
                times[entry].append(time.perf_counter() - start)
        for entry in entries:
            rows[entry][f"{phase}_clouds_s"] = batch / statistics.median(times[entry])
        for name, precision in entries:  # against the reference in the same precision, and in fp32
            row = rows[(name, precision)]
            row[f"{phase}_vs_reference"] = (
                row[f"{phase}_clouds_s"] / rows[(REFERENCE, precision)][f"{phase}_clouds_s"])
            if (REFERENCE, "fp32") in rows:
                row[f"{phase}_vs_reference_fp32"] = (
                    row[f"{phase}_clouds_s"] / rows[(REFERENCE, "fp32")][f"{phase}_clouds_s"])
    return {"rows": list(rows.values())}


def measure_attention(case: dict) -> dict:
    """Forward time and extra memory of the four attention blocks alone at N tokens."""
    device, kind, tokens = case["device"], case["attention"], case["points"]
    dim, batch = case["attention_dim"], case["attention_batch"]
    cores = {"external": lambda: ExternalAttention(dim), "offset": lambda: OffsetAttention(dim),
             "self": lambda: SelfAttention(dim)}
    torch.manual_seed(0)
    blocks = accelerate(nn.Sequential(*[OffsetBlock(cores[kind](), dim) for _ in range(4)]).to(device)).eval()
    x = torch.randn(batch, tokens, dim, device=device)
    before = torch.cuda.memory_allocated() / 2**20 if device.startswith("cuda") else _rss_mb()
    with torch.no_grad():
        seconds, peak, _ = _timed(lambda: blocks(x), repeats=case["repeats"], warmup=case["warmup"],
                               device=device)
    return {"attention": kind, "tokens": tokens, "batch_size": batch, "dim": dim,
            "ms": seconds * 1e3, "tokens_s": batch * tokens / seconds,
            "peak_mb": peak, "extra_mb": max(0.0, peak - before)}


def measure_ops(config: BenchConfig) -> list[dict]:
    """FPS and kNN, the compiled kernels against the plain torch forms, interleaved."""
    device = config.device
    gen = torch.Generator().manual_seed(0)
    fast = device == "cpu" and enabled() and sampling.available()  # PCEA_FAST_OPS=0: plain forms only

    try:  # an optional third contender, timed only where it is installed
        import torch_quickfps
    except ImportError:
        torch_quickfps = None

    def pair(name: str, setting: str, run_fast, run_torch, run_other=None) -> dict:
        times: dict[str, list[float]] = {"fast": [], "torch": [], "other": []}
        runs = [("fast", run_fast), ("torch", run_torch)] if fast else [("torch", run_torch)]
        if run_other is not None:
            runs.append(("other", run_other))
        for _ in range(config.warmup):
            for _, fn in runs:
                fn()
        _sync(device)
        for _ in range(config.repeats):
            for label, fn in runs:  # A, B, A, B: both see the same machine load
                start = time.perf_counter()
                fn()
                _sync(device)
                times[label].append(time.perf_counter() - start)
        row = {"op": name, "setting": setting, "torch_ms": statistics.median(times["torch"]) * 1e3}
        if fast:
            row["fast_ms"] = statistics.median(times["fast"]) * 1e3
        if run_other is not None:
            row["torch_quickfps_ms"] = statistics.median(times["other"]) * 1e3
        return row

    rows = []
    for b, n, m in config.fps:
        xyz = torch.rand(b, n, 3, generator=gen).to(device)
        first = torch.zeros(b, dtype=torch.long, device=device)
        other = None
        if torch_quickfps is not None:
            other = lambda xyz=xyz, m=m: torch_quickfps.sample_idx(xyz, m, start_idx=0)  # noqa: E731
        rows.append(pair("fps", f"{b}x{n}->{m}", lambda xyz=xyz, m=m: sampling.farthest_point_sample(xyz, m),
                         lambda xyz=xyz, m=m, first=first: ops._farthest_point_sample_torch(xyz, m, first),
                         other))
    k = config.knn_k
    for n in config.points:
        ref = torch.rand(config.batch_size, n, 3, generator=gen).to(device)
        query = ref[:, : max(1, n // 2)].contiguous()
        kk = min(k, n)
        rows.append(pair("knn", f"{config.batch_size}x{query.shape[1]} vs {n}, k={kk}",
                         lambda q=query, r=ref, kk=kk: sampling.knn(q, r, kk),
                         lambda q=query, r=ref, kk=kk: ops._knn_torch(q, r, kk)))
    return rows


_MEASURE = {"model": measure_model, "attention": measure_attention, "interleaved": measure_interleaved,
            "weights": measure_weights}


def _run_case(case: dict, isolate: bool) -> dict:
    if not isolate:
        return _MEASURE[case["kind"]](case)
    proc = subprocess.run(
        [sys.executable, "-m", "pcea.bench", json.dumps(case)],
        capture_output=True, text=True, check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"benchmark child for {case} failed (exit {proc.returncode}): {tail}")


def _median_rows(runs: list[dict]) -> dict:
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            merged[key] = statistics.median(run[key] for run in runs)
        elif key == "rows":  # an interleaved case: merge row by row
            groups = zip(*(run[key] for run in runs), strict=True)
            merged[key] = [_median_rows(list(group)) for group in groups]
    return merged


def run_bench(config: BenchConfig) -> dict:
    """Run every setting of ``config`` and return the results (the JSON that ``--json`` writes)."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    threads = torch.get_num_threads()
    common = {"device": config.device, "repeats": config.repeats, "warmup": config.warmup,
              "threads": threads}
    cases = []
    if "models" in config.sections:
        names = list(config.models) + ([REFERENCE] if config.reference else [])
        cases += [{"kind": "model", "model": name, "points": n, "batch_size": config.batch_size,
                   "precision": p, "train": config.train, **common}
                  for n in config.points for name in names for p in config.precision]
    if "models" in config.sections and config.reference:
        cases += [{"kind": "interleaved", "models": list(config.models), "points": n,
                   "batch_size": config.batch_size, "precisions": list(config.precision),
                   "train": config.train, **common} for n in config.points]
    if "attention" in config.sections:
        cases += [{"kind": "attention", "attention": kind, "points": n,
                   "attention_batch": config.attention_batch, "attention_dim": config.attention_dim,
                   **common} for n in config.points for kind in config.attention]
    if "weights" in config.sections:
        cases += [{"kind": "weights", "weights": str(w), "batch_size": config.batch_size, "precision": p,
                   **common} for w in config.weights for p in config.precision]
    runs: list[list[dict]] = [[] for _ in cases]
    for _ in range(config.rounds):
        for i, case in enumerate(cases):
            runs[i].append(_run_case(case, config.isolate))
    rows = [_median_rows(r) for r in runs]
    result = {
        "machine": machine_info(config.device),
        "config": {k: v for k, v in asdict(config).items()},
        "models": [r for r, c in zip(rows, cases, strict=True) if c["kind"] == "model"],
        "interleaved": [row for r, c in zip(rows, cases, strict=True) if c["kind"] == "interleaved"
                        for row in r["rows"]],
        "attention": [r for r, c in zip(rows, cases, strict=True) if c["kind"] == "attention"],
        "weights": [r for r, c in zip(rows, cases, strict=True) if c["kind"] == "weights"],
        "ops": measure_ops(config) if "ops" in config.sections else [],
    }
    return result


def _fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(result: dict) -> str:
    """The results as plain-text tables for the terminal."""
    m = result["machine"]
    lines = [
        f"machine    {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else ""),
        f"software   torch {m['torch']}, python {m['python']}, {m['platform']}",
        f"allocator  {m['allocator']}",
        f"date       {m['date']}",
    ]
    if result["models"]:
        lines += ["", "models: clouds/s (median), peak memory MB "
                  + ("(peak RSS of the process)" if m["device"] == "cpu" else "(max_memory_allocated)")
                  + "; plain: the pcea model as written, without pcea.fast",
                  f"{'model':<10}{'prec':<6}{'B':>4}{'N':>6}{'plain':>9}{'infer':>9}{'train':>9}"
                  f"{'plain MB':>10}{'infer MB':>10}{'train MB':>10}"]
        for r in result["models"]:
            lines.append(
                f"{r['model']:<10}{r.get('precision', 'fp32'):<6}{r['batch_size']:>4}{r['points']:>6}"
                f"{_fmt(r.get('plain_clouds_s')):>9}{_fmt(r['infer_clouds_s']):>9}"
                f"{_fmt(r.get('train_clouds_s')):>9}{_fmt(r.get('plain_peak_mb'), '.0f'):>10}"
                f"{_fmt(r['infer_peak_mb'], '.0f'):>10}{_fmt(r.get('train_peak_mb'), '.0f'):>10}")
    if result.get("interleaved"):
        lines += ["", "against the reference in one process, calls alternating (pcea models accelerated): "
                  "clouds/s; ratio to the reference in the same precision (and in fp32)",
                  f"{'model':<10}{'prec':<6}{'B':>4}{'N':>6}{'infer':>9}{'ratio':>8}{'fp32':>7}"
                  f"{'train':>9}{'ratio':>8}{'fp32':>7}"]
        for r in result["interleaved"]:
            lines.append(
                f"{r['model']:<10}{r.get('precision', 'fp32'):<6}{r['batch_size']:>4}{r['points']:>6}"
                f"{_fmt(r['infer_clouds_s']):>9}{_fmt(r['infer_vs_reference'], '.2f'):>8}"
                f"{_fmt(r.get('infer_vs_reference_fp32'), '.2f'):>7}{_fmt(r.get('train_clouds_s')):>9}"
                f"{_fmt(r.get('train_vs_reference'), '.2f'):>8}"
                f"{_fmt(r.get('train_vs_reference_fp32'), '.2f'):>7}")
    if result["attention"]:
        lines += ["", "attention layers alone (4 offset blocks, inference): ms per batch, extra memory MB",
                  f"{'attention':<10}{'B':>4}{'tokens':>8}{'ms':>10}{'extra MB':>10}"]
        for r in result["attention"]:
            lines.append(f"{r['attention']:<10}{r['batch_size']:>4}{r['tokens']:>8}"
                         f"{_fmt(r['ms']):>10}{_fmt(r['extra_mb'], '.0f'):>10}")
    if result.get("weights"):
        first = result["weights"][0]
        width = max(10, *(len(r["weights"]) + 2 for r in result["weights"]))
        lines += ["", "trained weights as pcea classify runs them (accelerated, at the input size on their "
                  f"card): ms per cloud (median); cost relative to {first['weights']}",
                  f"{'weights':<{width}}{'prec':<6}{'B':>4}{'N':>6}{'centres':>10}{'ms/cloud':>10}{'clouds/s':>10}"
                  f"{'cost':>7}{'MB':>7}"]
        for r in result["weights"]:
            lines.append(
                f"{r['weights']:<{width}}{r['precision']:<6}{r['batch_size']:>4}{r['points']:>6}"
                f"{'/'.join(map(str, r['centers'])):>10}{_fmt(r['ms_per_cloud'], '.2f'):>10}"
                f"{_fmt(r['infer_clouds_s']):>10}{r['ms_per_cloud'] / first['ms_per_cloud']:>6.2f}x"
                f"{_fmt(r['infer_peak_mb'], '.0f'):>7}")
    if result["ops"]:
        lines += ["", "point ops: ms (median); compiled kernel, plain torch, torch-quickfps if installed",
                  f"{'op':<5}{'setting':<26}{'fast ms':>9}{'torch ms':>10}{'speed-up':>10}{'quickfps':>10}"]
        for r in result["ops"]:
            fast = r.get("fast_ms")
            ratio = f"{r['torch_ms'] / fast:.1f}x" if fast else "-"
            lines.append(f"{r['op']:<5}{r['setting']:<26}{_fmt(fast):>9}{_fmt(r['torch_ms']):>10}{ratio:>10}"
                         f"{_fmt(r.get('torch_quickfps_ms')):>10}")
    return "\n".join(lines)


def write_json(result: dict, path: str) -> None:
    """Write the results as JSON, atomically (PceaFileError if the file cannot be written)."""
    write_atomic(path, json.dumps(result, indent=2) + "\n")


def _child_main(case_json: str) -> None:
    case = json.loads(case_json)
    torch.set_num_threads(case["threads"])
    print(_RESULT_TAG + json.dumps(_MEASURE[case["kind"]](case)), flush=True)


if __name__ == "__main__":  # a child of _run_case: one setting, one JSON line
    _child_main(sys.argv[1])
