"""What every benchmark here prints with: its output kept for --out, the tables and the
ratios against the peer measured in the same run."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess


class Tee:
    """stdout to the terminal and to a buffer (the text report goes into --out too)."""

    def __init__(self, stream):
        self.stream, self.parts = stream, []

    def write(self, s):
        self.parts.append(s)
        return self.stream.write(s)

    def flush(self):
        self.stream.flush()

    def text(self) -> str:
        return "".join(self.parts)


def table(head, rows) -> str:
    """A text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(cells):
        return " | ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                          for i, (x, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), "-+-".join("-" * w for w in widths), *(line(r) for r in rows)])


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def machine_info(work: str, packages: tuple = ()) -> dict:
    """The machine a run was made on: CPU, cores, the file system under `work`, load,
    and the versions of `packages`."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    fs = ""
    with contextlib.suppress(Exception):
        fs = subprocess.run(["df", "-T", work], capture_output=True, text=True).stdout.splitlines()[1].split()[1]
    versions = {}
    for mod in packages:
        with contextlib.suppress(Exception):
            from importlib.metadata import version
            versions[mod] = version(mod)
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "fs": fs,
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()), **versions}
