"""Charts and a table from the JSON that ``benchmarks/bench.py --json`` writes.

    .venv/bin/python benchmarks/plot.py docs/_static/bench.json
    .venv/bin/python benchmarks/plot.py results.json --out /tmp/charts

writes into ``docs/_static`` (or ``--out DIR``):

``performance.svg``
    setup, milliseconds per sandbox against N, one line per tool, log scale;
``performance-teardown.svg``
    the same for teardown (same scale, so the two compare at a glance);
``performance-table.inc``
    an RST table of the medians with each tool's time as a multiple of cnm's
    (and, for ``cnm-loop``, how long its loop of ``sandbox.delete()`` calls
    took until they returned), and a line with the date, kernel, CPUs and the command that measured
    them, for ``.. include::`` (not ``.rst``: Sphinx would take a ``.rst``
    file for a page of its own).

Needs only the standard library: the SVG is written by hand. ``bench.py
--plot`` runs this after writing its JSON.
"""

from __future__ import annotations

import argparse
import json
import math
from html import escape
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "docs" / "_static"

# Okabe-Ito colours (told apart with the common colour blindnesses), one
# marker shape and dash pattern per tool; unknown tools get the spares.
STYLE: dict[str, tuple[str, str, str, str]] = {
    # tool: (colour, marker, dash pattern, description)
    "cnm": ("#0072B2", "circle", "", "create_sandboxes"),
    "cnm-loop": ("#56B4E9", "ring", "6 3", "create_sandbox, connect"),
    "ipbatch": ("#E69F00", "square", "", "ip -batch, nft -f"),
    "cni": ("#009E73", "triangle", "", "CNI bridge + portmap"),
    "ipcli": ("#CC79A7", "diamond", "", "ip, nft per step"),
    "pyroute2": ("#D55E00", "down", "", "naive pyroute2"),
    "floor": ("#777777", "cross", "2 3", "kernel: netns, veth, addr"),
}
SPARE = [("#000000", "square", "4 2"), ("#F0E442", "diamond", "4 2"), ("#999999", "circle", "4 2")]
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 70, 200, 62, 58  # plot area margins; the legend is on the right


def ratio(value: float, base: float) -> str:
    """*value* as a multiple of *base* (as bench.py prints it)."""
    x = value / base
    return f"{x:.0f}x" if x >= 100 else f"{x:.1f}x" if x >= 1 else f"{x:.2f}x"


def ms(value: float) -> str:
    """Milliseconds with three significant figures or so, never in e-notation."""
    digits = 0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3
    return f"{value:.{digits}f}"


def tick(value: float) -> str:
    return f"{value:g}" if value >= 1e-4 else f"{value:.0e}"


def style(tool: str, index: int) -> tuple[str, str, str, str]:
    if tool in STYLE:
        return STYLE[tool]
    colour, marker, dash = SPARE[index % len(SPARE)]
    return colour, marker, dash, ""


def marker(shape: str, x: float, y: float, colour: str, label: str) -> str:
    """One data point, with a tooltip (the browser shows <title> on hover)."""
    r = 4.5
    fill = f'fill="{colour}" stroke="{colour}"'
    title = f"<title>{escape(label)}</title>"
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" {fill}>{title}</circle>'
    if shape == "ring":
        ring = f'fill="#fff" stroke="{colour}" stroke-width="2"'
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" {ring}>{title}</circle>'
    if shape == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" {fill}>{title}</rect>'
    if shape == "cross":
        d = f"M{x - r:.1f},{y - r:.1f}L{x + r:.1f},{y + r:.1f}M{x - r:.1f},{y + r:.1f}L{x + r:.1f},{y - r:.1f}"
        return f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2">{title}</path>'
    points = {
        "triangle": [(0, -1.2), (1.1, 0.8), (-1.1, 0.8)],
        "down": [(0, 1.2), (1.1, -0.8), (-1.1, -0.8)],
        "diamond": [(0, -1.3), (1.1, 0), (0, 1.3), (-1.1, 0)],
    }[shape]
    d = " ".join(f"{x + dx * r:.1f},{y + dy * r:.1f}" for dx, dy in points)
    return f'<polygon points="{d}" {fill}>{title}</polygon>'


def runs_text(data: dict[str, Any]) -> str:
    runs, peer_runs = data["runs"], data.get("peer_runs", data["runs"])
    peers = [t for t in data["tools"] if not t.startswith("cnm")]
    if peer_runs == runs or not peers:
        return f"median of {runs} run{'s' * (runs != 1)}"
    return f"median of {runs} runs (peers: {peer_runs})"


def chart(data: dict[str, Any], key: str, title: str, span: tuple[float, float]) -> str:
    """One SVG chart of *key* ("setup_ms" or "teardown_ms") against N."""
    counts = sorted({r["n"] for r in data["results"]})
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    lo, hi = math.log10(span[0]), math.log10(span[1])

    def ypos(value: float) -> float:
        return y1 - (math.log10(value) - lo) / (hi - lo) * (y1 - y0)

    # x: log10(N), with some room on both sides; a single N sits in the middle
    xlo, xhi = math.log10(counts[0]), math.log10(counts[-1])
    pad = (xhi - xlo) * 0.08 if xhi > xlo else 1.0

    def xpos(n: int) -> float:
        return x0 + (math.log10(n) - xlo + pad) / (xhi - xlo + 2 * pad) * (x1 - x0)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'font-family="{FONT}" font-size="12" role="img" aria-labelledby="title">',
        f'<title id="title">{escape(title)}</title>',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>',
        f'<text x="{x0}" y="24" font-size="16" font-weight="bold" fill="#222">{escape(title)}</text>',
        f'<text x="{x0}" y="43" fill="#666">{escape(subtitle(data))}</text>',
    ]
    # y grid: every decade (labelled), 2 and 5 of each (labelled when few decades)
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    few = hi - lo <= 2.01
    for e in decades:
        for m in (1, 2, 5):
            v = m * 10.0**e
            if not lo - 1e-9 <= math.log10(v) <= hi + 1e-9:
                continue
            y = ypos(v)
            major = m == 1
            colour, dash = ("#d0d0d0", "") if major else ("#ececec", ' stroke-dasharray="3 3"')
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="{colour}"{dash}/>')
            if major or few:
                weight = "#444" if major else "#888"
                out.append(f'<text x="{x0 - 8}" y="{y + 4:.1f}" text-anchor="end" fill="{weight}">{tick(v)}</text>')
    # x ticks at the measured counts
    for n in counts:
        x = xpos(n)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" stroke="#ececec"/>')
        out.append(f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y1 + 5}" stroke="#444"/>')
        out.append(f'<text x="{x:.1f}" y="{y1 + 19}" text-anchor="middle" fill="#444">{n}</text>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" fill="none" stroke="#444"/>')
    out.append(
        f'<text x="{(x0 + x1) / 2:.1f}" y="{HEIGHT - 14}" text-anchor="middle" fill="#222">'
        "N, sandboxes on one bridge (log scale)</text>"
    )
    yc = (y0 + y1) / 2
    out.append(
        f'<text x="18" y="{yc:.1f}" text-anchor="middle" fill="#222" transform="rotate(-90 18 {yc:.1f})">'
        "ms per sandbox (log scale)</text>"
    )
    # one line per tool, cnm last so that it is drawn on top
    tools = list(data["tools"])
    for i, tool in sorted(enumerate(tools), key=lambda item: item[1] == "cnm"):
        colour, shape, dash, _ = style(tool, i)
        points = sorted((r["n"], r[key], r["runs"]) for r in data["results"] if r["tool"] == tool)
        if not points:
            continue
        width = 3 if tool == "cnm" else 2
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        coords = " ".join(f"{xpos(n):.1f},{ypos(v):.1f}" for n, v, _ in points)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="{width}"{dashes}/>')
        for n, v, runs in points:
            label = f"{tool}, N={n}: {ms(v)} ms per sandbox (median of {runs})"
            out.append(marker(shape, xpos(n), ypos(v), colour, label))
    # legend
    lx, ly = x1 + 14, y0 + 6
    for i, tool in enumerate(tools):
        colour, shape, dash, description = style(tool, i)
        y = ly + 36 * i + 8
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        width = 3 if tool == "cnm" else 2
        out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 26}" y2="{y}" stroke="{colour}" stroke-width="{width}"{dashes}/>')
        out.append(marker(shape, lx + 13, y, colour, tool))
        out.append(f'<text x="{lx + 32}" y="{y + 4}" font-weight="bold" fill="#222">{escape(tool)}</text>')
        if description:
            out.append(f'<text x="{lx + 32}" y="{y + 19}" font-size="11" fill="#666">{escape(description)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def subtitle(data: dict[str, Any]) -> str:
    parts = [f"lower is better; {runs_text(data)}", f"Linux {data['kernel']}", f"{data['cpus']} CPUs", data["date"][:10]]
    return " · ".join(parts)


def table(data: dict[str, Any]) -> str:
    """The RST table of the medians, and the line that says how they were measured."""
    base = {r["n"]: r for r in data["results"] if r["tool"] == "cnm"}
    lines = [
        f".. list-table:: Milliseconds per sandbox ({runs_text(data)}); \"vs cnm\": as many times cnm's time",
        "   :header-rows: 1",
        "",
        "   * - Tool",
        "     - N",
        "     - Setup ms",
        "     - Teardown ms",
        "     - Setup vs cnm",
        "     - Teardown vs cnm",
        "     - Delete calls ms",
    ]
    order = {tool: i for i, tool in enumerate(data["tools"])}
    for r in sorted(data["results"], key=lambda r: (r["n"], order.get(r["tool"], len(order)))):
        cnm = base.get(r["n"])
        if r["tool"] == "cnm" or cnm is None:
            vs = ["—", "—"]
        else:
            vs = [ratio(r["setup_ms"], cnm["setup_ms"]), ratio(r["teardown_ms"], cnm["teardown_ms"])]
        lines += [
            f"   * - {r['tool']}",
            f"     - {r['n']}",
            f"     - {ms(r['setup_ms'])}",
            f"     - {ms(r['teardown_ms'])}",
            f"     - {vs[0]}",
            f"     - {vs[1]}",
            f"     - {ms(r['delete_calls_ms']) if 'delete_calls_ms' in r else ''}",
        ]
    cpu = f"{data['cpus']} CPUs" + (f" ({data['cpu_model']})" if data.get("cpu_model") else "")
    commit = f", cnm {data['cnm_commit']}" if data.get("cnm_commit") else ""
    when = data["date"][:16].replace("T", " ") + " UTC"
    lines += ["", f"Measured {when} on Linux {data['kernel']}, {cpu}{commit}, with ``{data['command']}``."]
    if data.get("skipped"):
        lines += ["", "Not run: " + "; ".join(f"{tool} ({why})" for tool, why in data["skipped"].items()) + "."]
    if not data.get("complete", True):
        lines += ["", "**The run was cut short**: these are the counts it finished."]
    return "\n".join(lines) + "\n"


def render(json_path: str | Path, out: str | Path = OUT) -> list[Path]:
    """Write the two charts and the table for *json_path* into *out*; return their paths."""
    data = json.loads(Path(json_path).read_text())
    if not data.get("results"):
        raise SystemExit(f"{json_path}: no results")
    values = [r[key] for r in data["results"] for key in ("setup_ms", "teardown_ms") if r[key] > 0]
    span = (10.0 ** math.floor(math.log10(min(values))), 10.0 ** math.ceil(math.log10(max(values))))
    if span[0] == span[1]:
        span = (span[0], span[1] * 10)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "performance.svg": chart(data, "setup_ms", "Setup: N sandboxes, one published port each", span),
        "performance-teardown.svg": chart(data, "teardown_ms", "Teardown: until the kernel removed every veth", span),
        "performance-table.inc": table(data),
    }
    for name, text in files.items():
        (out / name).write_text(text)
    return [out / name for name in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="the file written by bench.py --json")
    parser.add_argument("--out", type=Path, default=OUT, help=f"directory to write into (default {OUT})")
    args = parser.parse_args()
    for path in render(args.json, args.out):
        print(f"# wrote {path}")


if __name__ == "__main__":
    main()
