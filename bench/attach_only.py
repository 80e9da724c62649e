"""P1's attach-mode figure and its Mosquitto peer alone, in turn, for before/after pairs.

    python -m bench.attach_only [--runs 3] [--pubs 1] [--seconds 5]

Each round measures the non-durable Mosquitto bridge pair's PUBACK rate, then the outbox attached to
a Mosquitto (`bench.p1_ingest._attach`, the figure `bench/run` reports). Prints the samples and each
process's CPU per intent. For the "before", run it with PYTHONPATH pointing at a checkout of the old tree.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.p1_ingest import ATTACH, MOSQ_DEFAULT, _attach, _fig, mosquitto_pair
from bench.procs import ensure_mosquitto
from bench.report import Figure
from bench.stack import Stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pubs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-attach-"))
    stack, mosquitto = Stack(work), ensure_mosquitto()
    figs: dict[str, Figure] = {}
    try:
        for i in range(args.runs):
            mosquitto_pair(_fig(figs, MOSQ_DEFAULT, args.pubs), mosquitto, work / f"pair{i}", "default", args.pubs,
                           args.seconds)  # fmt: skip
            attach_fig = _fig(figs, ATTACH, args.pubs, (MOSQ_DEFAULT,))
            _attach(attach_fig, stack, mosquitto, work / f"attach{i}", args.pubs, args.seconds)
    finally:
        stack.stop_all()
    for fig in figs.values():
        cpu = {role: [round(us) for us in runs] for role, runs in fig.cpu_us.items()}
        print(f"{fig.name}: {[round(s) for s in fig.samples]} /s, CPU us per intent {cpu}")


if __name__ == "__main__":
    main()
