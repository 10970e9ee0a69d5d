"""write_report: one self-contained HTML file (embedded images, no external assets) + metrics.json."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from medray import storage
from medray.evaluation import metrics as M
from medray.evaluation import plots as P
from medray.evaluation import report as R


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Collector:
    c = _Collector()
    c.feed(page)
    c.close()
    return c


def _strict_json(text: str):
    def no_constants(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


@pytest.fixture(scope="module")
def sections():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3))
    logits[np.arange(60), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs[:, 2] = 0.0  # class 2 is never likely ...
    probs /= probs.sum(1, keepdims=True)
    age = rng.uniform(20, 80, 80)
    meter = M.SegmentationMeter(4, ignore_index=255, class_names=["background", "RNFL", "GCL", "sclera"])
    true = rng.integers(0, 3, (2, 16, 16))
    meter.update(np.where(rng.random(true.shape) < 0.7, true, 1), true)
    return [
        R.classification_section("ROP staging", y, probs, ["normal", "stage 1", "stage 2"],
                                 notes="Supervised-only baseline.\n\nSame labelled share."),
        R.regression_section("Retinal age", age, age + rng.normal(0, 3, 80), quantity="age", units="years",
                             groups=np.where(age > 50, "dy > 0", "dy = 0")),
        R.segmentation_section("OCT layers", meter),
        {"title": "Leaderboard", "tables": [R.Table(["model", "mean IoU"], [["unet", 0.81], ["fpn", float("nan")]],
                                                    "Candidates")],
         "notes": ["selected: unet", "<b>not bold</b>"]},
    ]


def test_report_is_one_self_contained_html_file(tmp_path, sections):
    uri = R.write_report(str(tmp_path / "eval"), "Evaluation <of> ROP & age", sections,
                         model={"name": "rop-srcmt", "version": 3}, data="rop test split (n = 60)",
                         date=dt.date(2024, 5, 1), notes="Produced for the methods paper.")
    out = tmp_path / "eval"
    assert uri == str(out / "report.html")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "report.html"]  # no temp files left
    page = (out / "report.html").read_text()
    doc = _parse(page)
    tags = [t for t, _ in doc.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    imgs = [a["src"] for t, a in doc.tags if t == "img"]
    assert len(imgs) == 4 + 2 + 2
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        im.load()
        assert im.format == "PNG" and im.size[0] > 300
    for _, attrs in doc.tags:
        for name, value in attrs.items():
            if name in ("src", "href"):
                assert value.startswith(("data:", "#")), value
    assert "http://" not in page and "https://" not in page and "url(" not in page
    text = " ".join(doc.text)
    assert "Evaluation <of> ROP & age" in text  # escaped in the markup, intact as text
    assert "<b>not bold</b>" in text and "<b>" not in page
    assert "rop-srcmt" in text and "2024-05-01" in text and "Produced for the methods paper." in text
    assert "For research use only" in text
    assert "Figure 8." in text and "n/a" in text
    # per-class table rows and a labelled confusion matrix
    assert "<td class='k'>stage 1</td>" in page and "<th scope='row'>stage 2</th>" in page


def test_metrics_json_round_trip(tmp_path, sections):
    top = M.classification_report([0, 1, 1, 0], [0.2, 0.9, 0.4, 0.1], ["healthy", "disease"])
    png = P.plot_bar({"a": 1.0, "b": 2.0})
    R.write_report(str(tmp_path), "Run 7", sections, metrics=top, images=[("bar.png", png, "A bar chart")],
                   classes=["healthy", "disease"], subtitle="fundus disease / test", date="2024-05-01")
    saved = _strict_json((tmp_path / "metrics.json").read_text())
    assert saved == R.build_metrics_document("Run 7", sections, metrics=top, subtitle="fundus disease / test",
                                             date="2024-05-01")
    assert saved["accuracy"] == top["accuracy"] and saved["binary"]["auc"] == top["binary"]["auc"]
    assert saved["report"]["title"] == "Run 7" and saved["report"]["date"] == "2024-05-01"
    assert set(saved["sections"]) == {"rop_staging", "retinal_age", "oct_layers"}  # leaderboard has no metrics
    assert saved["sections"]["rop_staging"]["per_class"]["stage 2"]["precision"] is None  # NaN -> null
    assert saved["sections"]["oct_layers"]["per_class"]["sclera"]["iou"] is None  # absent class
    assert saved["sections"]["retinal_age"]["groups"]["dy = 0"]["n"] > 0
    page = (tmp_path / "report.html").read_text()
    assert "fundus disease / test" in page and "Figure 1. A bar chart (bar.png)" in page


def test_mapping_as_sections_is_the_top_level_metrics(tmp_path):
    rep = M.regression_report([1, 2, 3], [1, 2, 4])
    uri = R.write_report(str(tmp_path), "Regression", rep)
    assert _strict_json((tmp_path / "metrics.json").read_text())["mae"] == pytest.approx(1 / 3)
    assert "<td class='k'>mae</td>" in open(uri).read()
    with pytest.raises(ValueError, match="either"):
        R.write_report(str(tmp_path), "x", rep, metrics=rep)
    with pytest.raises(ValueError, match="reserved"):
        R.write_report(str(tmp_path), "x", metrics={"report": 1})
    with pytest.raises(ValueError, match="PNG"):
        R.write_report(str(tmp_path), "x", [R.Section("s", plots=[R.Plot(b"GIF89a...")])])


def test_report_to_memory_uri_and_png_from_uri():
    base = "memory://medray-eval-test/run1"
    storage.write_bytes(f"{base}/roc.png", P.plot_bar({"x": 1.0}))
    uri = R.write_report(base, "Memory", [R.Section("Figures", plots=[(f"{base}/roc.png", "from a URI")])])
    assert uri == f"{base}/report.html"
    page = storage.read_text(uri)
    assert page.count("data:image/png;base64,") == 1
    assert _strict_json(storage.read_text(f"{base}/metrics.json"))["report"]["title"] == "Memory"


def test_report_to_s3(s3_bucket):
    out = f"{s3_bucket}/runs/7/eval"
    uri = R.write_report(out, "S3 report", {"accuracy": 0.5, "n": 2})
    assert uri == f"{out}/report.html"
    assert "S3 report" in storage.read_text(uri)
    assert _strict_json(storage.read_text(f"{out}/metrics.json"))["accuracy"] == 0.5
