"""
Small SVG charts written by hand: the loss curves that train.py redraws in every run folder at each
checkpoint (loss.svg, from log.jsonl), and a bar chart of an eval.py results JSON. No matplotlib: the
core path keeps its four dependencies, and an SVG of lines, dots and text is ~100 lines of string code
that any browser shows (hover a dot for its exact value).

    python plot.py loss runs/t2l-small                           # -> runs/t2l-small/loss.svg
    python plot.py bars out/base.json out/t2l.json --out out/scores.svg  # a bar per result
"""
import json
import math
import os
import sys
from xml.sax.saxutils import escape

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 360, 64, 150, 36, 48  # canvas and margins, px


def ticks(lo, hi, n=5):
    # "nice" round values (1, 2 or 5 x 10^k apart) covering [lo, hi]
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / n
    step = min((m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw))
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step)) + 1)]


def svg(body, title, w=W, h=H):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'font-family="sans-serif" font-size="12">\n<rect width="{w}" height="{h}" fill="white"/>\n'
            f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>\n'
            + "\n".join(body) + "\n</svg>\n")


def line_chart(series, title, xlabel, ylabel):
    """series: {label: [(x, y), ...]} -> SVG text; one polyline and one dot (with a hover title) per point."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return svg([f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no data yet</text>'], title)
    xt = ticks(min(x for x, _ in pts), max(x for x, _ in pts))
    yt = ticks(min(y for _, y in pts), max(y for _, y in pts))
    px = lambda x: LEFT + (x - xt[0]) / (xt[-1] - xt[0]) * (W - LEFT - RIGHT)
    py = lambda y: H - BOTTOM - (y - yt[0]) / (yt[-1] - yt[0]) * (H - TOP - BOTTOM)
    body = [f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="black"/>',
            f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="black"/>']
    for x in xt:
        body.append(f'<text x="{px(x):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{x:g}</text>')
    for y in yt:
        body.append(f'<line x1="{LEFT}" y1="{py(y):.1f}" x2="{W - RIGHT}" y2="{py(y):.1f}" stroke="#ddd"/>')
        body.append(f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.4g}</text>')
    body.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">{escape(xlabel)}</text>')
    body.append(f'<text transform="translate(16 {(TOP + H - BOTTOM) / 2}) rotate(-90)" text-anchor="middle">'
                f'{escape(ylabel)}</text>')
    for i, (label, s) in enumerate(series.items()):
        c = COLORS[i % len(COLORS)]
        body.append(f'<polyline class="series" data-label="{escape(label)}" fill="none" stroke="{c}" stroke-width="2" '
                    f'points="{" ".join(f"{px(x):.2f},{py(y):.2f}" for x, y in s)}"/>')
        body += [f'<circle cx="{px(x):.2f}" cy="{py(y):.2f}" r="3" fill="{c}"><title>{escape(label)}, {xlabel} '
                 f'{x:g}: {y:.4f}</title></circle>' for x, y in s]
        body.append(f'<text x="{W - RIGHT + 10}" y="{TOP + 16 + 18 * i}" fill="{c}">{escape(label)}</text>')
    return svg(body, title)


def bar_chart(bars, title, unit=""):
    """bars: [(label, value)] -> SVG text: horizontal bars, the value printed at the end of each."""
    top, row = 36, 22
    left = min(560, 16 + 7 * max([len(label) for label, _ in bars] + [10]))  # ~7 px per character of a label
    w = left + 420
    h = top + row * len(bars) + 16
    hi = max([v for _, v in bars] + [1e-9])
    body = []
    for i, (label, v) in enumerate(bars):
        y = top + row * i
        length = max(0.0, v) / hi * (w - left - 80)
        body += [f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{escape(label)}</text>',
                 f'<rect class="bar" x="{left}" y="{y + 2}" width="{length:.2f}" height="{row - 6}" '
                 f'fill="{COLORS[0]}"><title>{escape(label)}: {v:.2f}{unit}</title></rect>',
                 f'<text x="{left + length + 6:.2f}" y="{y + 14}">{v:.2f}{unit}</text>']
    return svg(body, title, w, h)


def read_log(path):
    """log.jsonl of a run -> its entries by step (a resumed run may log a step twice: the last one counts)."""
    by_step = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                e = json.loads(line)
                by_step[e["step"]] = e
    return [by_step[s] for s in sorted(by_step)]


def write_atomic(path, text):
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def loss_plot(run_dir):
    """run_dir/log.jsonl -> run_dir/loss.svg (train loss: the last batch before each checkpoint)."""
    log = read_log(os.path.join(run_dir, "log.jsonl"))
    series = {name: [(e["step"], e[key]) for e in log if e.get(key) is not None and math.isfinite(e[key])]
              for name, key in (("train loss", "train_loss"), ("held-out val loss", "val_loss"))}
    path = os.path.join(run_dir, "loss.svg")
    write_atomic(path, line_chart(series, f"{os.path.basename(os.path.normpath(run_dir))}: loss", "step", "loss"))
    return path


def results_bars(results_paths, out_path):
    """eval.py --out JSONs -> a bar per (task, adapter[, description]) result, its score in %; -> the bars."""
    bars = []
    for path in results_paths:
        with open(path) as f:
            results = json.load(f)["results"]
        for r in results:
            if r.get("score") is None:
                continue
            label = f"{r['task']} {r.get('metric', '')}: {r.get('adapter') or 'base'}"
            if r.get("description") and not str(r.get("adapter")).endswith("-mean"):
                label += f" [{r['description'][:24]}...]"
            bars.append((label, 100 * r["score"]))
    write_atomic(out_path, bar_chart(bars, "scores (%)", "%"))
    return bars


def main(argv=None):
    from data import Parser
    p = Parser(description="Draw a run's loss curves or eval.py results JSONs as SVG.")
    p.add_argument("what", choices=("loss", "bars"))
    p.add_argument("paths", nargs="+", help="loss: a run folder (with log.jsonl); bars: eval.py --out JSONs")
    p.add_argument("--out", default=None, help="bars: the SVG to write (default: the first JSON's name with .svg)")
    args = p.parse_args(argv)
    try:
        if args.what == "loss":
            out = loss_plot(args.paths[0])
        else:
            out = args.out or os.path.splitext(args.paths[0])[0] + ".svg"
            for label, v in results_bars(args.paths, out):
                print(f"{v:7.2f}  {label}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: cannot plot {' '.join(args.paths)}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
