"""Long-mode spec fuzzing with a watchdog: counts per outcome over many seeded mutants.

    python tests/fuzz_long.py [--count 10000] [--start 0] [--hang 10] [--out report.json]

Runs the hostile cases of tests/fuzz_cases.py, then mutants ``start .. start+count-1``, one
at a time in a worker process (in a temporary working directory) that the parent kills and
restarts on a hang (no answer after ``--hang`` seconds) or when its memory passes
``--max-rss-mb``. Every 10th case also goes through ``flowgraph compile`` in-process.

Outcomes: compiled, spec-error, unlocated (a SpecError pointing nowhere), unhandled (any other
exception), slow (over the per-case budget), memory (peak grew past the budget), hang,
side-effect (files created or changed under the worker's directory), cli (the CLI gave an exit
status other than 0/2 or printed a traceback).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEMORY_BUDGET_MB = 512
ACCEPTED = ("compiled", "spec-error", "usage-error")


def _peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def _worker(conn: mp.connection.Connection, workdir: str, build_every: int) -> None:
    import fuzz_cases as fc

    from flowgraph.cli.main import main

    os.chdir(workdir)
    specs = fc.prepare_tree(Path(workdir))
    hostile = fc.hostile_cases()
    fc.run_case(fc.Case("warm-up", "", (fc.ROOT / "specs" / "realnvp-2d.yaml").read_bytes()),
                specs)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        index, seed = msg
        case = hostile[seed] if index < len(hostile) else fc.make_case(seed)
        before = fc.snapshot(Path(workdir))
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        rss0 = _peak_rss_mb()
        out = fc.run_case(case, specs, build=index % build_every == 0)
        grown = _peak_rss_mb() - rss0
        kind, detail = out.kind, out.detail
        if kind in ACCEPTED and grown > MEMORY_BUDGET_MB:
            kind, detail = "memory", f"peak grew by {grown:.0f} MB"
        if kind in ACCEPTED and index % 10 == 0:
            path = fc.write_case(case, specs)
            sets = [a for item in case.overrides for a in ("--set", item)]
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                code = main(["compile", str(path), *sets])
            text = err.getvalue()
            if code not in (0, 2) or "Traceback" in text or "internal error" in text:
                kind, detail = "cli", f"exit {code}: {text[-2000:]}"
        if fc.snapshot(Path(workdir)) != before:
            kind, detail = "side-effect", "files created or changed"
        conn.send((case.name, case.overrides, kind, round(out.seconds, 3), detail))


class Runner:
    def __init__(self, hang: float, max_rss_mb: int, build_every: int):
        self.hang, self.max_rss_mb, self.build_every = hang, max_rss_mb, build_every
        self.ctx = mp.get_context("spawn")
        self.proc: mp.Process | None = None

    def start(self) -> None:
        self.workdir = tempfile.mkdtemp(prefix="fuzz-long-")
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.workdir, self.build_every), daemon=True)
        self.proc.start()
        if not self.conn.poll(300):
            raise RuntimeError("fuzz worker did not start")
        assert self.conn.recv() == "ready"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
            self.proc = None
            shutil.rmtree(self.workdir, ignore_errors=True)

    def rss_mb(self) -> float:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
        except (OSError, AttributeError):
            return 0.0

    def run(self, index: int, seed: int) -> tuple:
        if self.proc is None:
            self.start()
        self.conn.send((index, seed))
        t0 = time.monotonic()
        while not self.conn.poll(0.05):
            elapsed = time.monotonic() - t0
            if elapsed > self.hang or self.rss_mb() > self.max_rss_mb or not self.proc.is_alive():
                kind = ("hang" if elapsed > self.hang else "memory" if self.proc.is_alive()
                        else "crash")
                rss = self.rss_mb()
                self.stop()
                return (f"#{index}", [], kind, round(elapsed, 3), f"rss {rss:.0f} MB")
        try:
            return self.conn.recv()
        except (EOFError, OSError):  # the worker died (poll reports a closed pipe as ready)
            self.stop()
            return (f"#{index}", [], "crash", round(time.monotonic() - t0, 3), "worker died")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=int(os.environ.get("FLOWGRAPH_FUZZ_COUNT",
                                                                   "10000")))
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--hang", type=float, default=10.0)
    p.add_argument("--max-rss-mb", type=int, default=2048)
    p.add_argument("--out", default=None, help="JSON file for counts and failing cases")
    p.add_argument("--no-hostile", action="store_true", help="mutants only (e.g. a second shard)")
    p.add_argument("--build-every", type=int, default=1,
                   help="build and run every Nth tiny compiled case (1: all)")
    args = p.parse_args()
    import fuzz_cases as fc

    hostile = [c.name for c in fc.hostile_cases()]
    n_hostile = 0 if args.no_hostile else len(hostile)
    jobs = [(i, i) for i in range(n_hostile)]
    jobs += [(len(hostile) + k, args.start + k) for k in range(args.count)]
    runner = Runner(args.hang, args.max_rss_mb, args.build_every)
    counts: collections.Counter = collections.Counter()
    bad: list[dict] = []
    t0 = time.time()
    try:
        for n, (index, seed) in enumerate(jobs):
            name, overrides, kind, seconds, detail = runner.run(index, seed)
            if name.startswith("#"):  # the worker was killed: name the case here
                name = hostile[seed] if index < len(hostile) else f"mutant seed {seed}"
            counts[kind] += 1
            if kind not in ACCEPTED:
                bad.append({"case": name, "overrides": overrides, "outcome": kind,
                            "seconds": seconds, "detail": detail})
                print(f"[{kind}] {name} {overrides} {seconds:.2f}s\n    "
                      + detail[-600:].replace("\n", "\n    "), flush=True)
            if (n + 1) % 500 == 0:
                print(f"... {n + 1}/{len(jobs)} in {time.time() - t0:.0f} s: {dict(counts)}",
                      flush=True)
    finally:
        runner.stop()
    summary = {"cases": len(jobs), "hostile": n_hostile, "mutants": args.count,
               "first_seed": args.start, "build_every": args.build_every,
               "seconds": round(time.time() - t0), "counts": dict(counts), "failures": bad}
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0 if set(counts) <= set(ACCEPTED) else 1


if __name__ == "__main__":
    sys.exit(main())
