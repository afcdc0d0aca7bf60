"""What every benchmark here prints with: its output kept for --out, the tables and the
ratios against the peer measured in the same run."""

from __future__ import annotations


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
