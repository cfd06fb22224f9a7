#!/usr/bin/env python3
"""Benchmarks: ioserver against its peers, the same workload for every contender, in one process.

Usage (from the repository root)::

    .venv/bin/python scripts/bench.py channels             # 7 rounds, about 2 minutes
    .venv/bin/python scripts/bench.py channels --quick     # 3 rounds, N=100000, about 30 s
    .venv/bin/python scripts/bench.py channels --only spsc,round_trip --rounds 3
    .venv/bin/python scripts/bench.py channels --json results.json
    .venv/bin/python scripts/bench.py io                   # 7 rounds, about 4 minutes
    .venv/bin/python scripts/bench.py io --quick           # 3 rounds, about 1 minute
    .venv/bin/python scripts/bench.py daemon               # 7 rounds, about 2 minutes
    .venv/bin/python scripts/bench.py daemon --quick       # 3 rounds, about 30 s

What each workload does, with its sizes, is in docs/benchmarks.md.

How a workload is measured (``measure``): every contender first runs once, small and
untimed (a warm-up that also catches a broken contender early); then round r runs every
contender once, in an order rotated by r. Each run returns the seconds its timed part took.
Reported: the median over rounds of the metric (msgs/s, or µs per operation), the
contender/baseline ratio of each round, and the median of those ratios. Ratios are always
"contender metric / baseline metric": for msgs/s higher is better, for µs lower is better.
A workload may also name ``versus`` contenders: each row then gets the median of its
per-round ratios to those too (shown in its note; targets can check them). A run may return
``(seconds, extras)``: the extras (e.g. pipe writes per 100k requests) are kept per round
and their medians shown in the note. With ``direct=True`` a run returns the metric itself
(round trips/s over a fixed duration) instead of seconds.

Robustness: every loop is bounded by N; worker threads are daemons joined with a timeout;
a contender that raises or hangs is reported as "error: ..." or "timeout" in its cell and
is skipped for the remaining rounds, and the suite goes on.

Progress goes to stderr (one line per round of a workload), results to stdout: a machine
line first, then the table, then the targets block.

The ``daemon`` suite starts the real daemon (``python -m ioserver serve``) as a subprocess
on a socket in a temp dir, and always stops it with SIGTERM (try/finally).

Layout: this file is the entry point (the CLI); ``scripts/benchlib/harness.py`` is the
harness (``Config``, ``Row``, ``Target``, ``@suite``, ``measure``, the table),
``benchlib/machine.py`` the machine line, and ``benchlib/channels.py``, ``io.py`` and
``daemon.py`` one suite each.

Adding a suite: write ``def run_x(cfg: Config) -> list[Row]`` (usually a few
``measure(...)`` calls) in a new ``benchlib/x.py``, decorate it with ``@suite("x", "help",
targets=[...])``, add ``"x"`` to ``SUITE_MODULES``, and it becomes the subcommand ``x``.
Honour ``cfg.only`` (workload names)
and ``cfg.contender`` (a substring filter) so a profiler can run one loop alone, e.g.::

    py-spy record -o spsc.svg -- .venv/bin/python scripts/bench.py channels \\
        --only spsc --contender 'Channel()' --rounds 3
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from time import perf_counter

from benchlib.harness import SUITES, Config, progress, render_table, render_targets
from benchlib.machine import BusyMeter, machine_info, machine_line

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

SUITE_MODULES = ("channels", "io", "daemon")
"""The suites, in the CLI's order: each registers itself in SUITES when imported."""
for _module in SUITE_MODULES:
    importlib.import_module(f"benchlib.{_module}")


def main(argv: Sequence[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--rounds", type=int, help="rounds per workload (default 7; --quick 3)")
    common.add_argument(
        "--n",
        type=int,
        help="messages per streaming run (default 200000; --quick 100000); "
        "round trips are N/10, polls N/4",
    )
    common.add_argument("--quick", action="store_true", help="3 rounds, N=100000 (about 30 s)")
    common.add_argument("--json", metavar="FILE", help="also write machine, rows and targets here")
    common.add_argument("--only", metavar="W[,W]", help="run only these workloads")
    common.add_argument("--contender", metavar="SUBSTR", help="run only matching contenders")
    common.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per run before 'timeout' (30)"
    )
    common.add_argument(
        "--cores",
        choices=("current", "both"),
        default="current",
        help="current: the core this process runs (IOSERVER_PURE=1 forces pure Python); "
        "both: run the suite on the native core, then on pure Python, and set their "
        "targets side by side",
    )
    parser = argparse.ArgumentParser(
        description="ioserver benchmarks: every contender in one process, rotated rounds. "
        "Options go after the suite: bench.py channels --quick (see bench.py SUITE --help).",
    )
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for s in SUITES.values():
        sub.add_parser(s.name, help=s.help, description=s.help, parents=[common])
    args = parser.parse_args(argv)

    cfg = Config(
        rounds=args.rounds or (3 if args.quick else 7),
        n=args.n or (100_000 if args.quick else 200_000),
        quick=args.quick,
        timeout=args.timeout,
        only=set(args.only.split(",")) if args.only else None,
        contender=args.contender,
    )
    chosen = SUITES[args.suite]
    if args.cores == "both":
        return run_both_cores(chosen.name, args)
    info = machine_info()
    print(machine_line(info), flush=True)
    progress(f"suite {chosen.name}: rounds={cfg.rounds} N={cfg.n}")
    t0 = perf_counter()
    meter = BusyMeter()
    rows = chosen.run(cfg)
    others = meter.others()
    elapsed = perf_counter() - t0
    progress(f"suite {chosen.name}: done in {elapsed:.0f} s")
    print(render_table(rows))
    print()
    print(render_targets(chosen.name, chosen.targets, rows))
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    busy = "unknown" if others is None else f"{others:.2f} of {os.cpu_count()} cores"
    print(
        f"\nrun took {elapsed:.0f} s; other processes kept busy {busy} on average; "
        f"load average at start {info['load']}, at end {load_end}"
    )
    if args.json:
        payload = {
            "machine": info,
            "load_end": load_end,
            "other_processes_busy_cores": others,
            "seconds": round(elapsed, 1),
            "suite": chosen.name,
            "rounds": cfg.rounds,
            "n": cfg.n,
            "rows": [r.as_dict() for r in rows],
            "targets": [
                {**asdict(t), "verdict": t.check(rows)[0], "measured": t.check(rows)[1]}
                for t in chosen.targets
            ],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def run_both_cores(suite: str, args: argparse.Namespace) -> int:
    """Run ``suite`` in a child process per core (native, then pure Python), each printing
    its own table, then print every target's verdict on both cores side by side."""
    import subprocess
    import tempfile

    forwarded = [suite, "--timeout", str(args.timeout)]
    for flag, value in (("--rounds", args.rounds), ("--n", args.n)):
        if value:
            forwarded += [flag, str(value)]
    if args.quick:
        forwarded.append("--quick")
    if args.only:
        forwarded += ["--only", args.only]
    if args.contender:
        forwarded += ["--contender", args.contender]
    payloads: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for core in ("native", "python"):
            env = {k: v for k, v in os.environ.items() if k != "IOSERVER_PURE"}
            if core == "python":
                env["IOSERVER_PURE"] = "1"
            out = os.path.join(tmp, f"{core}.json")
            progress(f"cores: {suite} on the {core} core")
            done = subprocess.run(
                [sys.executable, __file__, *forwarded, "--json", out], env=env, check=False
            )
            if done.returncode != 0 or not os.path.exists(out):
                print(f"bench: the {core} run failed (exit {done.returncode})", file=sys.stderr)
                return 1
            payloads[core] = json.loads(Path(out).read_text())
    cores = [p["machine"]["core"] for p in payloads.values()]  # type: ignore[index]
    print(f"\ntargets ({suite}, both cores; the runs above: {' then '.join(cores)}):")
    print(f"  {'target':<46} {'native':<18} python")
    native_targets = payloads["native"]["targets"]
    python_targets = payloads["python"]["targets"]
    for n_t, p_t in zip(native_targets, python_targets, strict=True):  # type: ignore[call-overload]
        cells = [f"{t['verdict'].strip()} {t['measured']}" for t in (n_t, p_t)]
        print(f"  {n_t['label']:<46} {cells[0]:<18} {cells[1]}")
    if args.json:
        Path(args.json).write_text(json.dumps(payloads, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
