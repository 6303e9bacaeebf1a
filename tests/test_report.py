"""The static HTML report: escaping, structure, and (in headless Chromium) that it works."""
import html
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from neuroprobe.visualize.report import render_html, write_report

EVIL = '<img src=x onerror="alert(1)">&\'quote'


def _entries(out: Path | None = None):
    labels = ["person head", "text", EVIL, "person head", "vehicle", "text"]
    cats = ["person head", "text", "object", "person head", "vehicle", "text"]
    entries = []
    for i, (lab, cat) in enumerate(zip(labels, cats)):
        layer = "encoder.block3" if i < 3 else "encoder.block4"
        png = f"units/u{i}.png"
        if out is not None:
            (out / "units").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (120, 40), (40 * i, 200 - 30 * i, 90)).save(out / png)
        entries.append({"layer": layer, "unit": i, "label": lab, "category": cat,
                        "score": [0.12, 0.05, 0.30, 0.08, 0.02, 0.2][i], "detector": "1",
                        "png": png, "am_activation": 2.0, "top_activation": 1.0})
    return entries


SUMMARY = {"config": {"model": {"spec": "demo<&>"}, "concepts": {"name": "synthetic"},
                      "mode": "netdissect", "score": "iou", "iou_threshold": 0.04},
           "versions": {"neuroprobe": "0.1.0"}}


def test_every_text_from_data_is_escaped():
    page = render_html(_entries(), SUMMARY)
    assert EVIL not in page
    assert "<img src=x" not in page
    assert html.escape(EVIL, quote=True) in page
    assert "demo&lt;&amp;&gt;" in page and "demo<&>" not in page
    # one card per unit, each pointing at its PNG; no external resources
    assert page.count('class="card"') == 6
    assert 'src="units/u3.png"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_index_by_layer_and_concept_with_counts():
    page = render_html(_entries(), SUMMARY)
    assert 'data-set="layer" data-value="encoder.block3"' in page
    assert 'data-set="concept" data-value="person head"' in page
    assert '<option value="person head">person head (2)</option>' in page
    assert '<option value="encoder.block4">encoder.block4 (3)</option>' in page


def test_write_report_is_self_contained(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    Image.new("RGB", (10, 10)).save(run / "concepts.png")
    out = tmp_path / "gallery"
    page = write_report(out, _entries(out), SUMMARY, run_dir=run)
    assert page == out / "index.html"
    text = page.read_text(encoding="utf-8")
    for ref in re.findall(r'src="([^"]+)"', text):
        assert (out / html.unescape(ref)).is_file(), ref
    assert (out / "plots" / "concepts.png").is_file() and (out / "plots" / "scores.png").is_file()


# -- in a real browser ---------------------------------------------------------------------------

def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
                 "chrome", "headless_shell"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium/Chrome on PATH (apt-get install chromium) to open "
    "the report in a headless browser")


def _browser(url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory(prefix="np-chromium-") as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
               "--virtual-time-budget=3000", *extra, url]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _cards(dom: str):
    """(label, hidden) of every unit card, in DOM order."""
    out = []
    for tag in re.findall(r'<div class="card"[^>]*>', dom):
        label = html.unescape(re.search(r'data-label="([^"]*)"', tag).group(1))
        out.append((label, "hidden" in re.sub(r'data-[a-z]+="[^"]*"', "", tag)))
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    page = write_report(out, _entries(out), SUMMARY)
    return page


@needs_chromium
def test_cards_render_and_sort_in_browser(report):
    dom = _browser(report.as_uri(), "--dump-dom")
    assert 'data-ready="1"' in dom, "the inline script did not run"
    cards = _cards(dom)
    assert len(cards) == 6 and not any(hidden for _, hidden in cards)
    # default order: score, high first
    scores = [float(s) for s in re.findall(r'<div class="card"[^>]*data-score="([^"]+)"', dom)]
    assert scores == sorted(scores, reverse=True)
    assert "6 of 6 units" in dom
    # the hostile label arrived as text, not as an element
    assert "onerror" not in re.sub(r'data-label="[^"]*"|alt="[^"]*"', "", dom).replace(
        "&lt;img src=x onerror", "")


@needs_chromium
@pytest.mark.parametrize("concept,expected", [("person head", 2), ("text", 2), (EVIL, 1)])
def test_concept_filter_in_browser(report, concept, expected):
    from urllib.parse import quote

    dom = _browser(report.as_uri() + "#concept=" + quote(concept, safe=""), "--dump-dom")
    cards = _cards(dom)
    shown = [label for label, hidden in cards if not hidden]
    assert shown == [concept] * expected
    assert f'data-shown="{expected}"' in dom


@needs_chromium
def test_search_by_unit_and_layer_filter_in_browser(report):
    dom = _browser(report.as_uri() + "#q=block4:4", "--dump-dom")
    assert [lab for lab, hidden in _cards(dom) if not hidden] == ["vehicle"]
    dom = _browser(report.as_uri() + "#layer=encoder.block3&sort=score-asc", "--dump-dom")
    shown = [lab for lab, hidden in _cards(dom) if not hidden]
    assert shown == ["text", "person head", EVIL]


@needs_chromium
def test_screenshot(report, tmp_path):
    keep = os.environ.get("NEUROPROBE_SCREENSHOT_DIR")
    shot = (Path(keep) if keep else tmp_path) / "report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    _browser(report.as_uri() + "#concept=text", f"--screenshot={shot}",
             "--window-size=1200,900", "--hide-scrollbars")
    with Image.open(shot) as im:
        assert im.size == (1200, 900)
        # the page is not blank: the dark header and the cards differ from the background
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 20


def test_scores_figure_names_the_run_and_the_selection():
    """scores.png (issue 16): model, concept set and layers in the title; under
    --detectors-only it says so instead of claiming every unit; labels coloured by category."""
    import matplotlib.colors as mc
    import matplotlib.pyplot as plt

    from neuroprobe.results import CATEGORY_COLOURS
    from neuroprobe.visualize.report import scores_figure

    entries = [{"layer": "block4", "unit": u, "label": lab, "category": cat, "score": 0.1 + u}
               for u, (lab, cat) in enumerate([("head", "part"), ("head", "part"),
                                               ("car", "object")])]
    summary = {"config": {"model": {"spec": "demo"}, "concepts": {"name": "synthetic"}}}
    fig = scores_figure(entries, "IoU", summary, "detector units only")
    try:
        head = fig._suptitle.get_text()
        assert "demo" in head and "synthetic" in head and "block4" in head
        left, right = fig.axes[:2]
        assert "detector units only" in left.get_title() and "every unit" not in left.get_title()
        assert "higher is better" in left.get_xlabel()
        colours = [mc.to_hex(b.get_facecolor()) for b in right.patches]
        assert sorted(colours) == sorted([CATEGORY_COLOURS["part"], CATEGORY_COLOURS["object"]])
        assert all(float(t).is_integer() for t in right.get_xticks())
    finally:
        plt.close(fig)


LONG_SPEC = ("/home/someone/experiments/checkpoints/saliency_finetune_all_lr1e-4/"
             "epoch_020_val_nss_1.93.pt")


def _inside(fig, text_artist) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not hasattr(fig.canvas, "get_renderer"):    # a bare Figure
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    box = text_artist.get_window_extent(fig.canvas.get_renderer())
    return 0 <= box.x0 and box.x1 <= fig.bbox.width


def test_titles_naming_a_long_checkpoint_path_fit_their_figure():
    """Figure titles name the model; a checkpoint path has no spaces to wrap at, so the title
    is broken inside it rather than cut off at both edges of the PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neuroprobe.figures import wrap_to_figure
    from neuroprobe.visualize import attribute as at

    for width in (3.0, 4.4, 9.0):
        fig = plt.figure(figsize=(width, 3))
        try:
            text = f"Gallery units: model {LONG_SPEC}, concepts broden\nsecond line kept"
            wrapped = wrap_to_figure(fig, text, 11)
            assert wrapped.replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(
                " ", "")
            assert "\nsecond line kept" in wrapped
            assert _inside(fig, fig.suptitle(wrapped, fontsize=11))
            assert not _inside(fig, fig.suptitle(text, fontsize=11))   # the failure it fixes
        finally:
            plt.close(fig)
    import torch

    img, heat = torch.rand(3, 32, 32), torch.randn(32, 32)
    fig = at.figure(img, heat, signed=True, method="IG", title=f"{LONG_SPEC}  layer4:7\nIG on x")
    assert _inside(fig, fig.axes[0].title)
