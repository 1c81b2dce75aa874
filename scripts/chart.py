#!/usr/bin/env python3
"""Draws sweep.csv as an SVG: req/s and server CPU per request against connections,
one line per (server, pipeline depth). No plotting library needed.

    scripts/chart.py sweep.csv sweep.svg "title"
"""
import csv
import math
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
out, title = sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "sweep"
series = {}
for r in rows:
    key = f"{r['server']} p{r['pipeline']}"
    series.setdefault(key, []).append((int(r["connections"]), float(r["rps"]), float(r["cpu_us_per_req"])))
colors = {"leftpad p1": "#d62728", "floor p1": "#1f77b4", "leftpad p16": "#ff9896", "floor p16": "#aec7e8",
          "nginx p1": "#2ca02c", "nginx p16": "#98df8a", "go-v2 p1": "#9467bd", "go-v2 p16": "#c5b0d5"}
conns = sorted({c for s in series.values() for c, _, _ in s})

W, H, M = 480, 300, 80  # one panel (M: room for the y labels)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W + 40}" height="{H + 110}" font-family="sans-serif" font-size="12">',
       '<rect width="100%" height="100%" fill="white"/>',
       f'<text x="20" y="24" font-size="15" font-weight="bold">{title}</text>']


def panel(x0, label, index, log_y):
    values = [v[index] for s in series.values() for v in s if v[index] > 0]
    lo, hi = (min(values), max(values)) if values else (1, 2)
    if log_y:
        lo, hi = 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi))
        fy = lambda v: (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
    else:
        lo, hi = 0, hi * 1.1
        fy = lambda v: (v - lo) / (hi - lo)
    y0, top = H + 40, 50
    px = lambda c: x0 + M + (conns.index(c) / max(1, len(conns) - 1)) * (W - M - 20)
    py = lambda v: y0 - fy(v) * (y0 - top)
    svg.append(f'<text x="{x0 + M}" y="{top - 10}" font-weight="bold">{label}</text>')
    svg.append(f'<line x1="{x0 + M}" y1="{y0}" x2="{x0 + W - 20}" y2="{y0}" stroke="black"/>')
    svg.append(f'<line x1="{x0 + M}" y1="{y0}" x2="{x0 + M}" y2="{top}" stroke="black"/>')
    ticks = [lo * 10 ** i for i in range(int(round(math.log10(hi / lo))) + 1)] if log_y else [lo + (hi - lo) * i / 5 for i in range(6)]
    for t in ticks:
        svg.append(f'<line x1="{x0 + M}" y1="{py(t):.1f}" x2="{x0 + W - 20}" y2="{py(t):.1f}" stroke="#ddd"/>')
        text = f"{t:,.0f}" if t >= 10 else f"{t:.2g}"
        svg.append(f'<text x="{x0 + M - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{text}</text>')
    for c in conns:
        svg.append(f'<text x="{px(c):.1f}" y="{y0 + 16}" text-anchor="middle">{c}</text>')
    svg.append(f'<text x="{x0 + M + (W - M) / 2}" y="{y0 + 34}" text-anchor="middle">connections</text>')
    for name, points in sorted(series.items()):
        values = [(c, v[index - 1]) for c, *v in sorted(points)]
        coords = " ".join(f"{px(c):.1f},{py(v):.1f}" for c, v in values if v > 0)
        svg.append(f'<polyline points="{coords}" fill="none" stroke="{colors.get(name, "black")}" stroke-width="2.5"/>')


panel(0, "requests per second (log scale)", 1, True)
panel(W + 20, "server CPU µs per request (log scale)", 2, True)
for i, name in enumerate(sorted(series)):
    x = 80 + i * 150
    svg.append(f'<line x1="{x}" y1="{H + 95}" x2="{x + 24}" y2="{H + 95}" stroke="{colors.get(name, "black")}" stroke-width="3"/>')
    svg.append(f'<text x="{x + 30}" y="{H + 99}">{name}</text>')
svg.append("</svg>")
open(out, "w").write("\n".join(svg))
