"""`python -m bench [--quick] [--only P1,P2,...]`: run the benchmarks and write BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import ensure_mosquitto, mosquitto_version
from bench.report import Figure, Survival
from bench.stack import Stack

SECTIONS = {
    "P1": "durable ingest (QoS 1 publishers, PUBACKs/s)",
    "P2": "backlog drain after an offline period",
    "P3": "edge memory (RSS of the edge-outbox process)",
    "P4": "bridge fan-in (simulated devices over TLS)",
    "P5": "online latency, publish to `delivered` at the app (200 intents/s)",
    "P6": "durable ingest while offline, backlog growing to 100,000 (5,000 with --quick)",
}
ROOT = Path(__file__).resolve().parent.parent
FINDINGS = Path(__file__).resolve().parent / "findings.md"
SCALE = Path(__file__).resolve().parent / "scale.md"  # written by `python -m bench.scale`
LAST_RUN = Path(__file__).resolve().parent / "last-run.json"  # what the report was made from (not committed)


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard limit (children inherit it): 1,000 devices need fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def code_version() -> str:
    """The commit under test, and whether product files had uncommitted changes (a run measures the tree)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    dirty = git("status", "--porcelain", "--", "cloud_bridge", "edge_outbox", "intent_contract", "pyproject.toml")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes to product files" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs (a few minutes)")
    parser.add_argument("--only", default="P1,P2,P3,P4,P5,P6", help="comma-separated sections to run")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (at least 3 for the report)")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="report to write")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    parser.add_argument(
        "--rerender", action="store_true", help=f"only write the report again from {LAST_RUN.name} (e.g. new findings)"
    )
    args = parser.parse_args(argv)
    if args.rerender:
        saved = json.loads(LAST_RUN.read_text())
        saved["figures"] = [Figure.from_json(f) for f in saved["figures"]]
        saved["survivals"] = [Survival.from_json(s) for s in saved.get("survivals", [])]
        saved["findings"] = FINDINGS.read_text()
        args.out.write_text(report.render(**saved, scale=_scale()))
        print(f"wrote {args.out} from {LAST_RUN}")
        return 0
    only = [s.strip().upper() for s in args.only.split(",") if s.strip()]
    nofile = raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-", dir="/var/tmp"))
    print(f"bench: work directory {work}", flush=True)
    mosquitto = ensure_mosquitto()
    stack = Stack(work, keep=args.keep)
    stack.start_sink()
    figures: list[Figure] = []
    survivals: list[Survival] = []
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    code_before = code_version()
    t0 = time.monotonic()
    q = args.quick
    failures: list[str] = []
    io_stalls: list[str] = []
    try:
        for section in only:
            print(f"== {section}: {SECTIONS[section]}", flush=True)
            stall_before, section_t0 = report.io_stall_us(), time.monotonic()
            try:
                figs, survived = run_section(section, stack, mosquitto, args.runs, q)
                figures += figs
                survivals += survived
            except Exception as exc:
                traceback.print_exc()
                failures.append(f"{section}: {type(exc).__name__}: {exc}"[:500])
            stall_after = report.io_stall_us()
            if stall_before is not None and stall_after is not None:
                share = (stall_after - stall_before) / 1e6 / max(time.monotonic() - section_t0, 1e-9)
                io_stalls.append(f"{section} {share:.0%}")
            (work / "results.json").write_text(json.dumps([f.to_json() for f in figures], indent=1))
    finally:
        stack.stop_all()
    command = (
        "bench/run"
        + (" --quick" if q else "")
        + (f" --only {args.only}" if args.only != parser.get_default("only") else "")
    )
    extra = {
        "Mosquitto": mosquitto_version(mosquitto),
        "open files limit (bench and children)": str(nofile),
        "code under test (git, at start / end)": f"{code_before} / {code_version()}",
        "load average (1, 5, 15 min) at start / end": f"{load_before} / "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if io_stalls:
        extra["time some task waited on I/O, per section (Linux PSI `io some`)"] = ", ".join(io_stalls)
    if failures:
        extra["sections that failed in this run"] = "; ".join(failures)
    inputs: dict[str, Any] = {
        "sections": {k: v for k, v in SECTIONS.items() if k in only},
        "machine_info": report.machine(),
        "command": command,
        "started": started,
        "duration_s": time.monotonic() - t0,
        "extra": extra,
    }
    saved = {**inputs, "figures": [f.to_json() for f in figures], "survivals": [s.to_json() for s in survivals]}
    LAST_RUN.write_text(json.dumps(saved, indent=1))
    text = report.render(figures, findings=FINDINGS.read_text(), scale=_scale(), survivals=survivals, **inputs)
    args.out.write_text(text)
    print(text)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def _scale() -> str:
    return SCALE.read_text() if SCALE.exists() else ""


def run_section(
    section: str, stack: Stack, mosquitto: str, runs: int, quick: bool
) -> tuple[list[Figure], list[Survival]]:
    """One section's figures, and the durability table's rows (P6 only)."""
    if section == "P6":
        from bench import durability  # noqa: PLC0415

        return durability.run(
            stack, mosquitto, runs, backlog=5_000 if quick else 100_000, kill=500 if quick else 2_000,
            durable_cap_s=30 if quick else 120,
        )  # fmt: skip
    return _figures(section, stack, mosquitto, runs, quick), []


def _figures(section: str, stack: Stack, mosquitto: str, runs: int, quick: bool) -> list[Figure]:
    if section == "P1":
        from bench import p1_ingest  # noqa: PLC0415

        return p1_ingest.run(stack, mosquitto, runs, seconds=2.0 if quick else 4.0, publishers=[1, 4])
    if section == "P2":
        from bench import p2_drain  # noqa: PLC0415

        return p2_drain.run(stack, mosquitto, runs, backlog=5_000 if quick else 100_000, cap_s=60 if quick else 120)
    if section == "P3":
        from bench import p3_memory  # noqa: PLC0415

        sizes = [0, 10_000, 100_000] if quick else [0, 100_000, 1_000_000]
        return p3_memory.run(stack, runs, sizes)
    if section == "P4":
        from bench import p4_fanin  # noqa: PLC0415

        return p4_fanin.run(stack, runs, devices=100 if quick else 1000, batches=5 if quick else 3)
    if section == "P5":
        from bench import p5_latency  # noqa: PLC0415

        return p5_latency.run(
            stack, runs, rate=200, seconds=3.0 if quick else 10.0, history=100_000 if quick else 1_000_000
        )
    raise SystemExit(f"unknown section {section}")


if __name__ == "__main__":
    sys.exit(main())
