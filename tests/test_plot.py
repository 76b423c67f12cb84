"""plot.py: the SVGs parse as XML, their marks are an affine image of the data (read back from the file, not
recomputed with plot.py's own scales), a resumed run's repeated log lines count once, bad input is one line."""
import json
import xml.etree.ElementTree as ET

import pytest

import plot

NS = {"s": "http://www.w3.org/2000/svg"}


def test_loss_plot_points_follow_the_log(tmp_path):
    log = [{"step": 0, "val_loss": 3.4, "train_loss": None}, {"step": 50, "val_loss": 1.9, "train_loss": 2.2},
           {"step": 100, "val_loss": 1.7, "train_loss": 1.1},
           {"step": 100, "val_loss": 1.6, "train_loss": 1.3},  # the resumed run logged step 100 again: it counts
           {"step": 150, "val_loss": float("nan"), "train_loss": 0.9}]  # a non-finite value is left out
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    svg = ET.parse(plot.loss_plot(tmp_path)).getroot()
    assert not list(tmp_path.glob("*.tmp"))
    lines = {p.get("data-label"): [tuple(map(float, xy.split(","))) for xy in p.get("points").split()]
             for p in svg.iterfind(".//s:polyline", NS)}
    want = {"held-out val loss": [(0, 3.4), (50, 1.9), (100, 1.6)], "train loss": [(50, 2.2), (100, 1.3), (150, 0.9)]}
    assert set(lines) == set(want)
    pts = [(p, d) for k in want for p, d in zip(lines[k], want[k])]
    assert all(len(lines[k]) == len(want[k]) for k in want)
    (x0, y0), (s0, l0) = pts[0]
    (x1, y1), (s1, l1) = pts[-1]
    ax, ay = (x1 - x0) / (s1 - s0), (y1 - y0) / (l1 - l0)
    assert ax > 0 and ay < 0  # later steps to the right, higher losses higher up
    for (x, y), (s, v) in pts:
        assert x == pytest.approx(x0 + ax * (s - s0), abs=0.02) and y == pytest.approx(y0 + ay * (v - l0), abs=0.02)
    titles = [t.text for t in svg.iterfind(".//s:circle/s:title", NS)]
    assert "held-out val loss, step 100: 1.6000" in titles and len(titles) == 6


def test_bar_chart_lengths_are_proportional(tmp_path):
    res = {"results": [{"task": "arc_easy", "metric": "acc", "adapter": "base", "score": 0.5},
                       {"task": "arc_easy", "metric": "acc", "adapter": "t2l", "score": 0.25, "description": "Pick <A>"},
                       {"task": "arc_easy", "metric": "acc", "adapter": "t2l-mean", "score": 0.4, "description": "x"},
                       {"task": "x", "adapter": "base", "score": None}]}
    (tmp_path / "r.json").write_text(json.dumps(res))
    bars = plot.results_bars([tmp_path / "r.json"], tmp_path / "r.svg")
    assert [v for _, v in bars] == [50.0, 25.0, 40.0] and "[Pick <A>...]" in bars[1][0] and "[" not in bars[2][0]
    rects = ET.parse(tmp_path / "r.svg").getroot().findall(".//s:rect[@class='bar']", NS)  # the "<" is escaped
    widths = [float(r.get("width")) for r in rects]
    assert widths[1] == pytest.approx(widths[0] / 2) and widths[2] == pytest.approx(widths[0] * 0.8)


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert plot.main(["loss", str(tmp_path)]) == 1  # no log.jsonl
    (tmp_path / "bad.json").write_text("{}")
    assert plot.main(["bars", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err), err
