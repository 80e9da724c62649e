"""Figures (samples over runs), their summary (median, range, ratio to a peer) and BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(slots=True)
class Figure:
    """One measured quantity, one sample per run."""

    section: str
    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)  # names of figures in the same section to compare with
    target: str = ""
    note: str = ""
    higher_is_better: bool = True
    cpu_us: dict[str, list[float]] = field(default_factory=dict)  # process -> CPU us per intent, per run
    tenths: list[list[float]] = field(default_factory=list)  # per run: the rate in each tenth of what it counted

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def add_cpu(self, used_s: dict[str, float], intents: int) -> None:
        """One run's CPU seconds per process (`CpuWatch.used()`), as microseconds per intent counted (none when
        nothing was counted)."""
        if intents <= 0:
            return
        for role, seconds in used_s.items():
            self.cpu_us.setdefault(role, []).append(seconds / intents * 1e6)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Figure:
        return cls(**data)  # type: ignore[arg-type]


def fmt_num(value: float) -> str:
    """Readable numbers: 12,345 / 123 / 12.3 / 1.23."""
    if value != value:  # NaN
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(fig: Figure, peer: str, figures: list[Figure]) -> float | None:
    """median(fig) / median(peer), or None when the peer has no samples."""
    for other in figures:
        if other.section == fig.section and other.name == peer and other.samples and other.median:
            return fig.median / other.median
    return None


def cpu_cell(fig: Figure) -> str:
    """Median CPU us per intent of each process, and their sum: `edge 310 + bridge 420 = 730`."""
    medians = {role: statistics.median(v) for role, v in fig.cpu_us.items() if v}
    if not medians:
        return "-"
    text = " + ".join(f"{role} {fmt_num(us)}" for role, us in medians.items())
    return text + (f" = {fmt_num(sum(medians.values()))}" if len(medians) > 1 else "")


def table(figures: list[Figure]) -> str:
    """A markdown table of figures: median, range over runs, CPU per intent when measured, ratio to the peer,
    target."""
    with_cpu = any(fig.cpu_us for fig in figures)
    lines = [
        "| figure | median | range (min - max) |" + (" CPU per intent, us |" if with_cpu else "")
        + " runs | vs peer | target |",
        "|---|---:|---:|" + ("---|" if with_cpu else "") + "---:|---|---|",
    ]  # fmt: skip
    for fig in figures:
        if fig.samples:
            med = f"{fmt_num(fig.median)} {fig.unit}"
            rng = f"{fmt_num(min(fig.samples))} - {fmt_num(max(fig.samples))}"
        else:
            med, rng = "not measured", "-"
        parts = []
        for peer in fig.peers:
            r = ratio(fig, peer, figures)
            parts.append(f"{r:.2f}x {peer}" if r is not None else f"- {peer}")
        vs = "; ".join(parts) or "-"
        name = fig.name + (f" ({fig.note})" if fig.note else "")
        cpu = f" {cpu_cell(fig)} |" if with_cpu else ""
        lines.append(f"| {name} | {med} | {rng} |{cpu} {len(fig.samples)} | {vs} | {fig.target or '-'} |")
    return "\n".join(lines)


def tenths_table(figures: list[Figure]) -> str:
    """The rate in each tenth of what was counted (median over the runs that reached it), for figures with tenths."""
    figs = [f for f in figures if f.tenths]
    if not figs:
        return ""
    lines = [
        "| figure | " + " | ".join(f"to {10 * (i + 1)}%" for i in range(10)) + " |",
        "|---|" + "---:|" * 10,
    ]
    for fig in figs:
        cells = []
        for i in range(10):
            reached = [run[i] for run in fig.tenths if len(run) > i]
            cells.append(fmt_num(statistics.median(reached)) if reached else "-")
        lines.append(f"| {fig.name} ({fig.unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(slots=True)
class Survival:
    """One configuration's kill -9 during an outage: messages acknowledged, and how many of them arrived at
    the other side after the restart; one count per run."""

    name: str
    acked: list[int] = field(default_factory=list)
    arrived: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Survival:
        return cls(**data)  # type: ignore[arg-type]


def survival_table(survivals: list[Survival]) -> str:
    """Acked, arrived and lost per run (`a / b / c`) and lost over all runs, one row per configuration."""
    lines = [
        "| configuration | acked during the outage | arrived after kill -9 and restart | lost | lost in all runs |",
        "|---|---:|---:|---:|---|",
    ]

    def runs(values: list[int]) -> str:
        return " / ".join(f"{v:,}" for v in values) or "-"

    for s in survivals:
        lost = [a - b for a, b in zip(s.acked, s.arrived, strict=True)]
        total, acked = sum(lost), sum(s.acked)
        share = "none" if total == 0 else "all" if total == acked else f"{100 * total / acked:.1f}%"
        summary = f"{total:,} of {acked:,} ({share})" if acked else "-"
        lines.append(f"| {s.name} | {runs(s.acked)} | {runs(s.arrived)} | {runs(lost)} | {summary} |")
    return "\n".join(lines)


def _first_line(path: str, prefix: str) -> str:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def io_stall_us() -> int | None:
    """Microseconds that some task of this machine has waited on I/O since boot (Linux PSI, `some total`),
    None where the kernel does not say. Its growth over a section, as a share of the section's time, tells
    how much a noisy disk (e.g. another tenant of a virtual machine's host) weighed on that section."""
    try:
        with open("/proc/pressure/io") as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> dict[str, str]:
    """nproc, RAM, CPU model, disk and OS of this machine."""
    mem_kb = _first_line("/proc/meminfo", "MemTotal")
    try:
        ram = f"{int(mem_kb.split()[0]) / 1024 / 1024:.1f} GiB"
    except (ValueError, IndexError):
        ram = mem_kb
    disk = "unknown"
    try:
        out = subprocess.run(
            ["df", "-hT", str(Path.cwd())], capture_output=True, text=True, check=False, timeout=10
        ).stdout.splitlines()
        if len(out) > 1:
            parts = out[1].split()
            disk = f"{parts[0]} ({parts[1]}, {parts[2]} total) at {parts[-1]}"
        dev = parts[0].removeprefix("/dev/")
        rot = Path(f"/sys/block/{dev.rstrip('0123456789')}/queue/rotational")
        if rot.exists():
            disk += ", rotational" if rot.read_text().strip() == "1" else ", non-rotational"
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return {
        "nproc": str(os.cpu_count()),
        "RAM": ram,
        "CPU": _first_line("/proc/cpuinfo", "model name"),
        "disk": disk,
        "OS": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
    }


TENTHS_NOTE = (
    "The rate in each tenth of the messages counted (the first 10% acknowledged, then the next 10%, ...), median "
    "over the runs that got that far; `-`: not reached."
)
DURABILITY_TITLE = "## Durability: kill -9 of the edge process during an outage"
DURABILITY_NOTE = (
    "Each configuration takes messages while its other side is down and acknowledges them; the edge process "
    "is killed with SIGKILL right after the last acknowledgement, restarted on the same data with the other "
    "side up, and the acknowledged messages that reach the other side are counted by their ids. Counts per "
    "run, `a / b / c`."
)
SCALE_TITLE = "## Scale-out: P2 drain and P4 fan-in on PostgreSQL with 1-3 bridge nodes, beside one SQLite node"


def render(
    figures: list[Figure],
    *,
    sections: dict[str, str],
    machine_info: dict[str, str],
    command: str,
    started: str,
    duration_s: float,
    extra: dict[str, str],
    findings: str,
    scale: str = "",
    survivals: list[Survival] | None = None,
) -> str:
    """The whole BENCHMARKS.md; `scale` is bench/scale.md (written by `python -m bench.scale`); `survivals`
    the durability table (section P6)."""
    out = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {started} (took {duration_s / 60:.1f} min). Every figure is the median",
        "over the runs shown, with its range; ratios compare medians measured in the same run on the",
        "same machine. Methods: [docs/benchmarks.md](docs/benchmarks.md).",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in {**machine_info, **extra}.items()],
        "",
        f"Reproduce: `{command}`",
        "",
    ]
    for section, title in sections.items():
        figs = [f for f in figures if f.section == section]
        if not figs:
            continue
        out += [f"## {section}: {title}", "", table(figs), ""]
        if tenths := tenths_table(figs):
            out += [TENTHS_NOTE, "", tenths, ""]
    if survivals:
        out += [DURABILITY_TITLE, "", DURABILITY_NOTE, "", survival_table(survivals), ""]
    if scale.strip():
        out += [SCALE_TITLE, "", scale.strip(), ""]
    out += ["## Findings", "", findings.strip(), ""]
    return "\n".join(out)
