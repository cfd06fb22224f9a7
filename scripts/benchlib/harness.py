"""The harness every suite shares: the configuration, rows and targets, the suite
registry (``@suite``), running threads with a deadline, ``measure`` (warm-up, then
rotated rounds, medians of per-round ratios), and rendering the table and targets.
"""

from __future__ import annotations

import gc
import statistics
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root."""

# ---------------------------------------------------------------------------------------
# Harness: configuration, rows, the suite registry


@dataclass
class Config:
    """Options shared by every suite."""

    rounds: int
    n: int  # messages for streaming workloads; round trips are n // 10
    quick: bool
    timeout: float  # seconds one run of one contender may take before it is "timeout"
    only: set[str] | None = None  # workload names to run (None: all)
    contender: str | None = None  # run only contenders whose name contains this

    def wants(self, workload: str) -> bool:
        return self.only is None or workload in self.only


@dataclass
class Row:
    """One contender in one workload: per-round values, ratios to the baseline, status."""

    workload: str
    contender: str
    unit: str  # "msgs/s" (higher is better) or "µs/rt", "µs/call" (lower is better)
    baseline: str  # name of the baseline contender of this workload
    values: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    status: str = "ok"  # "ok", "timeout", "error: ...", "skipped"
    note: str = ""
    vs: dict[str, list[float]] = field(default_factory=dict)  # per-round ratios to others
    extras: dict[str, list[float]] = field(default_factory=dict)  # per-round side metrics

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def is_baseline(self) -> bool:
        return self.contender == self.baseline

    def ratio_to(self, other: str) -> float | None:
        got = self.vs.get(other)
        return statistics.median(got) if got else None

    def extra(self, name: str) -> float | None:
        got = self.extras.get(name)
        return statistics.median(got) if got else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["median"] = self.median
        d["median_ratio"] = self.ratio
        return d


@dataclass(frozen=True)
class Target:
    """A goal: ``workload``/``contender`` ``metric`` ``op`` ``bound``.

    ``metric`` "ratio" is the median ratio to the baseline, or to ``versus`` if given;
    "value" is the median of the metric itself (in the row's unit); any other name is the
    median of that per-round extra (e.g. "pipe writes/100k"). ``op`` "report" only shows
    the figure (verdict "info"; ``bound`` is ignored).
    """

    workload: str
    contender: str
    op: str  # ">=" or "<=", or "report" (no bound: the figure is shown as "info")
    bound: float
    label: str
    versus: str | None = None
    metric: str = "ratio"

    def check(self, rows: Sequence[Row]) -> tuple[str, str]:
        """("PASS" | "MISS", what was measured)."""
        for row in rows:
            if row.workload == self.workload and row.contender == self.contender:
                if self.metric == "ratio":
                    r = row.ratio if self.versus is None else row.ratio_to(self.versus)
                    shown = "" if r is None else f"{r:.2f}x"
                elif self.metric == "value":
                    r = row.median
                    shown = "" if r is None else f"{fmt_value(r, row.unit)} {row.unit}"
                else:
                    r = row.extra(self.metric)
                    shown = "" if r is None else f"{r:.1f} {self.metric}"
                if self.op == "report":
                    return "info", shown or f"nothing measured ({row.status})"
                if r is None:
                    return "MISS", f"nothing measured ({row.status})"
                ok = r >= self.bound if self.op == ">=" else r <= self.bound
                return ("PASS" if ok else "MISS"), shown
        return "n/a ", "not run"


@dataclass
class Suite:
    name: str
    help: str
    run: Callable[[Config], list[Row]]
    targets: list[Target]


SUITES: dict[str, Suite] = {}


def suite(
    name: str, help: str, targets: Sequence[Target] = ()
) -> Callable[[Callable[[Config], list[Row]]], Callable[[Config], list[Row]]]:
    """Register ``fn(cfg) -> rows`` as the subcommand ``name``."""

    def register(fn: Callable[[Config], list[Row]]) -> Callable[[Config], list[Row]]:
        SUITES[name] = Suite(name, help, fn, list(targets))
        return fn

    return register


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Harness: running threads with a deadline, measuring contenders in rotated rounds


class RunTimeout(Exception):
    """A run did not finish within ``Config.timeout``."""


def run_threads(funcs: Sequence[Callable[[], object]], timeout: float) -> None:
    """Run each function in a daemon thread (started in order); wait at most ``timeout``.

    Raises the first exception a thread raised, or RunTimeout if one is still running at
    the deadline (it is left behind: it is a daemon, and blocked rather than spinning).
    """
    errors: list[BaseException] = []

    def guarded(f: Callable[[], object]) -> None:
        try:
            f()
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=guarded, args=(f,), daemon=True, name=f"bench-{i}")
        for i, f in enumerate(funcs)
    ]
    for t in threads:
        t.start()
    deadline = perf_counter() + timeout
    for t in threads:
        while t.is_alive() and not errors:
            left = deadline - perf_counter()
            if left <= 0:
                raise RunTimeout
            t.join(min(left, 0.1))
        if errors:
            raise errors[0]


#: What a run returns: the timed seconds (or, with ``measure(direct=True)``, the metric),
#: optionally with per-run side metrics (name -> value).
RunResult = float | tuple[float, dict[str, float]]


@dataclass
class Contender:
    """``run(n)`` performs the workload once with size ``n`` and returns the timed seconds
    (see RunResult)."""

    name: str
    run: Callable[[int], RunResult]
    note: str = ""


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit.endswith("/s"):
        return (
            f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v < 1e4 else f"{v / 1e3:.0f}k"
        )
    if unit.startswith("B/"):
        return f"{v:.0f}"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def measure(
    cfg: Config,
    workload: str,
    contenders: Sequence[Contender],
    *,
    n: int,
    unit: str,
    baseline: str,
    versus: Sequence[str] = (),
    direct: bool = False,
) -> list[Row]:
    """Warm up, then run every contender once per round in rotated order; return rows.

    ``unit`` "msgs/s" turns seconds into n / seconds; a "µs/..." unit into µs per op;
    with ``direct`` the run returns the metric itself. ``versus``: contenders every row
    is also compared with (per-round ratios, medians in the note).
    """
    if cfg.contender:
        keep = {baseline, *versus}
        contenders = [c for c in contenders if cfg.contender in c.name or c.name in keep]
    rows = {c.name: Row(workload, c.name, unit, baseline, note=c.note) for c in contenders}

    def one(c: Contender, size: int) -> tuple[float, dict[str, float]] | None:
        row = rows[c.name]
        if row.status != "ok":
            return None
        gc.collect()
        try:
            got = c.run(size)
        except RunTimeout:
            row.status = "timeout"
            return None
        except Exception as exc:
            row.status = f"error: {type(exc).__name__}: {exc}"[:60]
            return None
        seconds, extras = got if isinstance(got, tuple) else (got, {})
        if direct:
            return seconds, extras
        return (size / seconds if unit == "msgs/s" else seconds / size * 1e6), extras

    warm = max(n // 20, 50)
    for c in contenders:
        one(c, warm)
    for r in range(cfg.rounds):
        k = r % len(contenders)
        order = list(contenders[k:]) + list(contenders[:k])
        got: dict[str, float] = {}
        for c in order:
            res = one(c, n)
            if res is not None:
                got[c.name] = res[0]
                rows[c.name].values.append(res[0])
                for key, x in res[1].items():
                    rows[c.name].extras.setdefault(key, []).append(x)
        base = got.get(baseline)
        if base is not None:
            for name, v in got.items():
                rows[name].ratios.append(v / base)
        for other in versus:
            ref = got.get(other)
            if ref is not None:
                for name, v in got.items():
                    if name != other:
                        rows[name].vs.setdefault(other, []).append(v / ref)
        shown = ", ".join(
            f"{c.name} {fmt_value(got.get(c.name), unit) if c.name in got else rows[c.name].status}"
            for c in contenders
        )
        progress(f"  {workload} round {r + 1}/{cfg.rounds} ({unit}): {shown}")
    for row in rows.values():
        notes = [row.note] if row.note else []
        for key, xs in row.extras.items():
            notes.append(f"{key}: {statistics.median(xs):.1f} (max {max(xs):.0f})")
        for other in versus:
            ratio = row.ratio_to(other)
            if ratio is not None and not row.is_baseline:
                notes.append(f"{ratio:.2f}x {other}")
        row.note = "; ".join(notes)
    return list(rows.values())


# ---------------------------------------------------------------------------------------
# Output


def render_table(rows: Sequence[Row]) -> str:
    header = ["workload", "contender", "median", "unit", "x base", "per-round ratio", "note"]
    lines: list[list[str]] = []
    for row in rows:
        if row.status != "ok" and not row.values:
            median = row.status
        else:
            median = fmt_value(row.median, row.unit)
            if row.status != "ok":
                median += f" ({row.status})"
        if row.is_baseline:
            ratio, rounds = "1 (base)", ""
        else:
            ratio = "-" if row.ratio is None else f"{row.ratio:.2f}"
            rounds = " ".join(f"{r:.2f}" for r in row.ratios)
        lines.append([row.workload, row.contender, median, row.unit, ratio, rounds, row.note])
    widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(header)]
    out = []
    for cells in [header, ["-" * w for w in widths], *lines]:
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(out)


def render_targets(name: str, targets: Sequence[Target], rows: Sequence[Row]) -> str:
    out = [f"targets ({name}, median ratios):"]
    for t in targets:
        verdict, got = t.check(rows)
        out.append(f"  {verdict}  {t.label:<46} measured {got}")
    return "\n".join(out)
