"""Figures (samples over runs), their summary (median, range, ratio to a peer) and BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
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

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def to_json(self) -> dict[str, object]:
        return {
            "section": self.section,
            "name": self.name,
            "unit": self.unit,
            "samples": self.samples,
            "peers": self.peers,
            "target": self.target,
            "note": self.note,
            "higher_is_better": self.higher_is_better,
        }

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


def table(figures: list[Figure]) -> str:
    """A markdown table of figures: median, range over runs, ratio to the peer, target."""
    lines = [
        "| figure | median | range (min - max) | runs | vs peer | target |",
        "|---|---:|---:|---:|---|---|",
    ]
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
        lines.append(f"| {name} | {med} | {rng} | {len(fig.samples)} | {vs} | {fig.target or '-'} |")
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
) -> str:
    """The whole BENCHMARKS.md."""
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
    out += ["## Findings", "", findings.strip(), ""]
    return "\n".join(out)
