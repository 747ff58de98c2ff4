#!/usr/bin/env python3
"""Draws the scale curve that `aegis-bench scale` (scripts/bench-scale.sh) wrote as CSV.

    plot-scale.py [CSV] [--out-dir DIR]     (defaults: docs/scale.csv, docs)

writes DIR/scale-secrets.png (start-up time and resident memory against the number
of secrets, log-log, with a line proportional to the count through the largest
point and issue 20's targets; fetch and write p99) and DIR/scale-watchers.png
(memory and p99s against the number of idle watchers).

Needs matplotlib. Install it into a virtual environment once:

    python3 -m venv ~/.cache/aegis/plot-venv
    ~/.cache/aegis/plot-venv/bin/pip install matplotlib
    ~/.cache/aegis/plot-venv/bin/python scripts/plot-scale.py
"""

import argparse
import csv
import os
import sys

INSTALL = (
    "matplotlib is missing. Install it into a virtual environment and run this script with it:\n"
    "  python3 -m venv ~/.cache/aegis/plot-venv\n"
    "  ~/.cache/aegis/plot-venv/bin/pip install matplotlib\n"
    "  ~/.cache/aegis/plot-venv/bin/python scripts/plot-scale.py"
)


def number(v):
    """A CSV cell as a float, None when empty."""
    return float(v) if v not in (None, "") else None


def read(path):
    """The rows of the CSV, numbers as floats (None when not measured)."""
    with open(path, newline="") as f:
        rows = []
        for r in csv.DictReader(f):
            rows.append({k: (v if k in ("kind", "note") else number(v)) for k, v in r.items()})
        return rows


def measured(rows, kind, x, y):
    """(x, y) pairs of `kind` rows where both are measured and x > 0, by x."""
    pts = [(r[x], r[y]) for r in rows if r["kind"] == kind and r[x] and r[y] is not None]
    return sorted(pts)


def linear_through(pts):
    """A line y = c * x through the largest point of `pts`, over their x range."""
    (x_max, y_max) = pts[-1]
    xs = [pts[0][0], x_max]
    return xs, [y_max * x / x_max for x in xs]


def secrets_plot(plt, rows, out):
    fig, (ax_t, ax_m, ax_p) = plt.subplots(1, 3, figsize=(16, 5))
    base = [r for r in rows if r["kind"] == "secrets" and r["secrets"] == 0]

    pts = [(n, ms / 1000) for n, ms in measured(rows, "secrets", "secrets", "ready_ms")]
    if pts:
        ax_t.loglog(*zip(*pts), "o-", label="start-up to ready")
        ax_t.loglog(*linear_through(pts), "--", color="grey", label="proportional to secrets")
        ax_t.plot([1_000_000], [20], "r*", markersize=12, label="target: 1M ready < 20 s")
        if base and base[0]["ready_ms"]:
            ax_t.axhline(base[0]["ready_ms"] / 1000, color="green", linestyle=":", label="empty Safe")
    ax_t.set(xlabel="secrets (1 KiB each)", ylabel="seconds", title="Start-up time")

    pts = measured(rows, "secrets", "secrets", "rss_mb")
    if pts:
        ax_m.loglog(*zip(*pts), "o-", label="resident memory, ready and idle")
        ax_m.loglog(*linear_through(pts), "--", color="grey", label="proportional to secrets")
        tgt = measured(rows, "secrets", "secrets", "target_rss_mb")
        ax_m.loglog(*zip(*tgt), "r-", label="target: 1.5 x plaintext + 30 MB")
        plain = measured(rows, "secrets", "secrets", "plaintext_mb")
        ax_m.loglog(*zip(*plain), ":", color="black", label="plaintext")
        if base and base[0]["rss_mb"]:
            ax_m.axhline(base[0]["rss_mb"], color="green", linestyle=":", label="empty Safe")
    ax_m.set(xlabel="secrets (1 KiB each)", ylabel="MB", title="Resident memory")

    p99_plot(ax_p, rows, "secrets", "secrets (1 KiB each)", "p99 latency")

    for ax in (ax_t, ax_m, ax_p):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Aegis scale curve: secrets")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def p99_plot(ax, rows, kind, xlabel, title):
    """Fetch and write p99 against the rows' `kind` count."""
    for col, label in (("fetch_p99_ms", "fetch p99 (kept-alive)"), ("write_p99_ms", "write p99 (durable)")):
        pts = measured(rows, kind, kind, col)
        if pts:
            ax.semilogx(*zip(*pts), "o-", label=label)
    ax.set(xlabel=xlabel, ylabel="ms", title=title, ylim=(0, None))


def watchers_plot(plt, rows, out):
    fig, (ax_m, ax_k, ax_p) = plt.subplots(1, 3, figsize=(16, 5))
    pts = measured(rows, "watchers", "watchers", "rss_with_watchers_mb")
    if pts:
        ax_m.loglog(*zip(*pts), "o-", label="resident memory with watchers")
        ax_m.loglog(*linear_through(pts), "--", color="grey", label="proportional to watchers")
    skipped = [r for r in rows if r["kind"] == "watchers" and r["rss_with_watchers_mb"] is None]
    for r in skipped:
        ax_m.axvline(r["watchers"], color="red", linestyle=":", label=f"{int(r['watchers']):,}: not run (descriptor limit)")
    ax_m.set(xlabel="idle watchers", ylabel="MB", title="Resident memory")

    pts = measured(rows, "watchers", "watchers", "per_watcher_kb")
    if pts:
        ax_k.semilogx(*zip(*pts), "o-", label="extra memory per watcher")
    ax_k.set(xlabel="idle watchers", ylabel="KB", title="Memory per watcher", ylim=(0, None))

    p99_plot(ax_p, rows, "watchers", "idle watchers", "p99 latency with the watchers attached")

    for ax in (ax_m, ax_k, ax_p):
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    n = next((int(r["secrets"]) for r in rows if r["kind"] == "watchers"), 0)
    fig.suptitle(f"Aegis scale curve: idle watchers (data set of {n:,} secrets)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="?", default="docs/scale.csv")
    p.add_argument("--out-dir", default="docs")
    a = p.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(INSTALL, file=sys.stderr)
        return 3
    rows = read(a.csv)
    written = []
    if any(r["kind"] == "secrets" for r in rows):
        written.append(os.path.join(a.out_dir, "scale-secrets.png"))
        secrets_plot(plt, rows, written[-1])
    if any(r["kind"] == "watchers" for r in rows):
        written.append(os.path.join(a.out_dir, "scale-watchers.png"))
        watchers_plot(plt, rows, written[-1])
    print("plot-scale: wrote " + (", ".join(written) or "nothing (no rows)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
