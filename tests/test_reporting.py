"""Figures and reports of a run and of a sweep, checked against the files and numbers behind them."""

from __future__ import annotations

import base64
import io as stdio
import json
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from advrun import experiment
from advrun.attacks import PGD
from advrun.config import config_dir
from advrun.reporting import plots
from advrun.reporting.gallery import amplification, attack_gallery, perturbation_image
from advrun.reporting.linear import affine_weights, optimal_perturbation
from advrun.reporting.regions import decision_grid
from advrun.reporting.report import FIGURES, write_run_report
from advrun.reporting.sweep import find_jobs, write_sweep_report
from advrun.runfolder import is_certified
from tests.conftest import REPO, TINY, run_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")

# Comparisons without stated tolerances use the defaults, a few ulps: torch.allclose and
# np.allclose (rtol 1e-5, atol 1e-8) and pytest.approx (rel 1e-6). They compare float32 softmax
# values recomputed in another batch, percentages 100 * k / n, and floats read back from CSV.


def _run(folder: Path, *overrides: str) -> Path:
    """A tiny run in-process into ``folder`` (its own empty model cache)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADVRUN_CACHE_DIR", str(folder.parent / f"model-cache-{folder.name}"))
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*TINY, "report=true", *overrides])
        experiment.run(cfg, folder)
    return folder


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, one_thread) -> Path:
    return _run(tmp_path_factory.mktemp("runs") / "digits", "attack.steps=3")


@pytest.fixture(scope="module")
def logreg_run(tmp_path_factory, one_thread) -> Path:
    return _run(tmp_path_factory.mktemp("runs") / "logreg", "model=logreg", "attack.steps=3")


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory, one_thread) -> Path:
    return _run(tmp_path_factory.mktemp("runs") / "moons", "dataset=moons", "attack.steps=3")


def assert_picture(path: Path, min_colours: int = 20) -> np.ndarray:
    """The PNG decodes, is not blank (many colours, not all white)."""
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] > 100 and image.shape[1] > 100, path
    codes = image.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)
    colours = len(np.unique(codes))
    assert colours >= min_colours, f"{path.name}: only {colours} colours"
    assert (image < 200).any(axis=2).mean() > 0.01, f"{path.name} is almost all white"
    return image


def assert_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    drawn = [e for e in root.iter() if e.tag.rsplit("}", 1)[-1] in ("path", "image", "use")]
    assert len(drawn) > 10, f"{path.name}: nearly empty"


def markdown_table(text: str, heading: str) -> pd.DataFrame:
    """The first Markdown table after ``## heading``, as strings."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return pd.DataFrame(cells[2:], columns=cells[0])


def with_interval(k: int, n: int) -> str:
    """``k / n`` as the reports show it: the percentage, then its 95% Clopper-Pearson interval."""
    from advrun.stats import clopper_pearson

    low, high = clopper_pearson(k, n)
    return f"{100 * k / n:.2f}% [{100 * low:.1f}, {100 * high:.1f}]"


class _Page(HTMLParser):
    """Tags, attributes and text of an HTML page."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse_html(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


# ----------------------------------------------------------------------------- per run


def test_every_figure_of_a_run_is_a_png_and_an_svg(digits_run):
    for stem in ("robustness_curve", "training_curve", "adversarial_gallery"):
        assert_picture(digits_run / f"{stem}.png")
        assert_svg(digits_run / f"{stem}.svg")
    assert not (digits_run / "linear_model.png").exists()  # an MLP is not affine
    assert not (digits_run / "decision_regions.png").exists()  # digits are not 2-D


def test_report_md_tables_hold_the_curve_rows_and_their_denominators(digits_run):
    curve = pd.read_csv(digits_run / "curve.csv")
    table = markdown_table((digits_run / "report.md").read_text(), "Robustness curve")
    assert len(table) == len(curve)
    for row, record in zip(table.to_dict("records"), curve.to_dict("records")):
        if is_certified(record["attack"]):  # a proof: no attack counts, robust = proven / all
            assert row["robust accuracy"] == with_interval(record["n_robust"], record["n_samples"])
            assert row["correct"] == row["fooled"] == "-"
            continue
        # the table writes eps with :g (6 significant digits, <= 5e-6 relative); rel 1e-3 is looser
        assert float(row["eps"]) == pytest.approx(record["eps"], rel=1e-3)
        robust = record["n_correct"] - record["n_success"]  # robust: correct, and not fooled
        assert row["robust accuracy"] == with_interval(robust, record["n_samples"])
        assert row["success rate"] == with_interval(record["n_success"], record["n_eligible"])
        assert (int(row["correct"]), int(row["fooled"])) == (record["n_correct"], record["n_success"])
    metrics = json.loads((digits_run / "metrics.json").read_text())
    headline = markdown_table((digits_run / "report.md").read_text(), "Results")
    n_correct = round(metrics["clean_accuracy"] * metrics["n_eval"])
    assert headline["value"].iloc[0] == with_interval(n_correct, metrics["n_eval"])
    assert headline["denominator"].iloc[0].endswith(f"({n_correct} / {metrics['n_eval']})")
    text = (digits_run / "report.md").read_text()
    assert "initially correct samples" in text and "all N" in text  # the three denominators explained
    assert text.count("95% Clopper-Pearson") == 1  # the intervals' method, stated once
    for png in digits_run.glob("*.png"):
        assert f"]({png.name})" in text


def test_report_html_is_one_self_contained_page(digits_run):
    page = parse_html(digits_run / "report.html")
    images = [attrs["src"] for tag, attrs in page.tags if tag == "img"]
    assert len(images) == len(list(digits_run.glob("*.png")))
    for src in images:
        assert src.startswith("data:image/png;base64,")
        Image.open(stdio.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe")
        for name in ("src", "href"):
            assert not str(attrs.get(name, "")).startswith(("http:", "https:", "//")), (tag, attrs)
    text = " ".join(page.text)
    config = (digits_run / ".hydra" / "config.yaml").read_text()
    assert "pgd" in text and "steps: 3" in config and "steps: 3" in text  # the resolved config is shown
    metrics = json.loads((digits_run / "metrics.json").read_text())
    assert metrics["versions"]["torch"] in text and str(metrics["device"]) in text


def test_advrun_report_rebuilds_a_run_report_from_its_files(digits_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(digits_run, copy)
    for name in ("report.md", "report.html"):
        (copy / name).unlink()
    done = subprocess.run([sys.executable, "-m", "advrun.reporting.cli", str(copy)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("report.md", "report.html"):
        rebuilt = (copy / name).read_text().replace(str(copy.resolve()), "FOLDER")
        original = (digits_run / name).read_text().replace(str(digits_run.resolve()), "FOLDER")
        assert rebuilt == original


def test_a_run_folder_written_before_the_intervals_is_reported_without_them(digits_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(digits_run, old)
    metrics = json.loads((old / "metrics.json").read_text())
    for key in ("clean_accuracy_ci", "robust_accuracy_ci", "success_rate_ci", "counts", "intervals"):
        del metrics[key]
    (old / "metrics.json").write_text(json.dumps(metrics))
    curve = pd.read_csv(old / "curve.csv")
    curve.drop(columns=[c for c in curve.columns if c.endswith(("_low", "_high"))] + ["n_robust"]).to_csv(
        old / "curve.csv", index=False)
    write_run_report(old)
    text = (old / "report.md").read_text()
    headline = markdown_table(text, "Results")
    assert headline["value"].iloc[0] == f"{100 * metrics['clean_accuracy']:.2f}%"
    assert headline["denominator"].iloc[0] == f"correct clean predictions / all {metrics['n_eval']} samples"
    assert markdown_table(text, "Robustness curve")["robust accuracy"].str.fullmatch(r"\d+\.\d\d%").all()


def test_the_console_summary_shows_each_rate_with_its_interval():
    import rich.console

    from advrun.reporting.tables import summary_table
    from advrun.stats import clopper_pearson

    curve = pd.DataFrame([{"attack": "pgd", "norm": "linf", "eps": 0.1, "robust_accuracy": 0.25, "success_rate": 0.5,
                           "robust_accuracy_low": 0.1, "robust_accuracy_high": 0.45, "success_rate_low": 0.3,
                           "success_rate_high": 0.7, "mean_norm": 0.1, "median_norm": 0.1, "time_s": 1.0}])
    console = rich.console.Console(width=80, record=True)
    console.print(summary_table(curve, 0.5, 40, "title"))
    text = console.export_text()
    low, high = clopper_pearson(20, 40)
    lines = text.splitlines()  # each interval on the line below its rate, whole, in 80 columns
    row = next(i for i, line in enumerate(lines) if "25.00%" in line)
    assert "50.00%" in lines[row] and "[10.0, 45.0]" in lines[row + 1] and "[30.0, 70.0]" in lines[row + 1]
    assert f"clean accuracy 50.00% [{100 * low:.1f}, {100 * high:.1f}] of 40 samples" in text
    assert "95% Clopper-Pearson" in text


def test_the_report_of_a_failed_run_says_why_and_escapes_the_text(digits_run, tmp_path):
    failed = tmp_path / "failed"
    shutil.copytree(digits_run / ".hydra", failed / ".hydra")
    (failed / "error.txt").write_text("attack.eps: must be a finite number >= 0, got <script>alert(1)</script>\n")
    markdown, page = write_run_report(failed)
    html = page.read_text()
    assert "This run failed" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html
    assert "attack.eps: must be a finite number" in markdown.read_text()
    assert "Robustness curve" not in html
    interrupted = tmp_path / "interrupted"
    shutil.copytree(digits_run / ".hydra", interrupted / ".hydra")
    assert "has not finished" in write_run_report(interrupted)[1].read_text()


def test_a_traceback_and_an_audit_that_warns_reach_both_reports(tmp_path):
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("dataset:\n  name: digits\n")
    (folder / "error.txt").write_text("RuntimeError: planted\n")
    (folder / "traceback.txt").write_text("Traceback:\n  a ```fence``` and <tag>\nRuntimeError: planted\n")
    checks = [{"name": "gradients", "status": "warn", "reason": "a | b\nc", "advice": "use square"},
              {"name": "logits", "status": "pass", "reason": "ok", "advice": None}]
    (folder / "audit.json").write_text(json.dumps(checks))
    markdown, page = (path.read_text() for path in write_run_report(folder))
    trace = markdown.split("## Traceback\n\n", 1)[1]
    assert trace.startswith("````\nTraceback:\n  a ```fence``` and <tag>\nRuntimeError: planted\n````\n")  # code as it is
    assert "1 passed, 1 warned, 0 not applicable." in markdown and "> **Warning:** Some checks warn" in markdown
    table = markdown_table(markdown, "Evaluation audit")
    assert table.to_dict("records") == [
        {"check": "**gradients**", "status": "warn", "reason": "a \\| b c", "advice": "use square"},
        {"check": "logits", "status": "pass", "reason": "ok", "advice": ""}]
    assert "<pre><code>Traceback:\n  a ```fence``` and &lt;tag&gt;\nRuntimeError: planted\n</code></pre>" in page
    assert '<div class="notice warn">Some checks warn' in page
    assert '<tr class="warn"><td>gradients</td><td>warn</td><td>a | b\nc</td><td>use square</td></tr>' in page


def test_small_figures_are_enlarged_and_others_shown_as_they_are(tmp_path):
    folder = tmp_path / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("dataset:\n  name: digits\n")
    for name, width in (("patch", 28), ("robustness_curve", 800), ("narrow", 199), ("wide", 200)):
        Image.new("RGB", (width, 20), "white").save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    page = parse_html(write_run_report(folder)[1])
    classes = {attrs["alt"]: attrs.get("class") for tag, attrs in page.tags if tag == "img"}
    assert classes == {"The adversarial patch the attack trained.": "small", "narrow": "small", "broken": "small",
                       "wide": None, FIGURES["robustness_curve"]: None}


@pytest.mark.parametrize("content, words", [
    ("[1, 2]", "holds a JSON list, not advrun's metrics"),
    ('"clean"', "holds a JSON str, not advrun's metrics"),
    ("{}", "is not advrun's metrics: dataset, "),
    ('{"clean_accuracy": 0.9', "cannot be read as JSON ("),
    ("\udcff garbage", "cannot be read as JSON ("),
])
def test_advrun_report_on_metrics_that_are_not_advruns_is_one_line_naming_the_file(digits_run, tmp_path, capsys,
                                                                                    content, words):
    from advrun.reporting.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(digits_run, copy)
    for name in ("report.md", "report.html"):
        (copy / name).unlink()
    (copy / "metrics.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    assert main([str(copy)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"advrun-report: error: {copy / 'metrics.json'}: {words}"), lines
    assert not (copy / "report.md").exists() and not (copy / "report.html").exists()


def test_linear_model_pictures_for_logreg_and_regions_for_moons(logreg_run, moons_run):
    assert_picture(logreg_run / "linear_model.png")
    assert_svg(logreg_run / "linear_model.svg")
    assert_picture(logreg_run / "adversarial_gallery.png")
    assert_picture(moons_run / "decision_regions.png")
    assert_svg(moons_run / "decision_regions.svg")
    assert not (moons_run / "adversarial_gallery.png").exists()  # 2-D points are not images
    for run in (logreg_run, moons_run):
        pngs = sorted(p.name for p in run.glob("*.png"))
        assert all(f"]({name})" in (run / "report.md").read_text() for name in pngs)


# ----------------------------------------------------------------------------- figure maths


def test_gallery_labels_confidences_and_amplified_perturbation(trained):
    model, x, y = trained("mlp")
    x, y = x[:8], y[:8]
    gallery = attack_gallery(model, PGD(eps=0.2, steps=10), x, y, bounds=(0.0, 1.0))
    with torch.no_grad():
        clean, adversarial = torch.softmax(model(x), 1), torch.softmax(model(gallery.x_adv), 1)
    assert torch.equal(gallery.clean_prediction, clean.argmax(1))
    assert torch.equal(gallery.adversarial_prediction, adversarial.argmax(1))
    assert torch.allclose(gallery.adversarial_confidence, adversarial.max(1).values)
    assert (gallery.adversarial_prediction != y).sum() >= 4  # eps 0.2 fools most digits
    factor = amplification(gallery.delta)
    shown = perturbation_image(gallery.delta[0], factor)
    # float32 values in [0, 1] (ulp <= 1.2e-7) computed by the same formula
    assert np.allclose(shown, 0.5 + factor * gallery.delta[0, 0].numpy(), atol=1e-6)
    largest = max(np.abs(perturbation_image(d, factor) - 0.5).max() for d in gallery.delta)
    assert 0.45 <= largest <= 0.5  # the largest change fills the display range, without clipping
    assert amplification(torch.zeros(3, 1, 8, 8)) == 1.0


@pytest.mark.parametrize("norm", [float("inf"), 2.0, 1.0])
def test_optimal_perturbation_of_an_affine_model_is_optimal(trained, norm):
    model, x, y = trained("logreg")
    x, y = x[:20], y[:20]
    weight, bias = affine_weights(model, x)
    with torch.no_grad():
        # weights read off by float32 autograd, then 64-term float32 sums to logits of order 10: ~1e-5
        assert torch.allclose(x.flatten(1) @ weight.T + bias, model(x), atol=1e-4)
        eps = 0.3
        delta, targets = optimal_perturbation(weight, bias, x, y, eps, norm)
        size = torch.linalg.vector_norm(delta.flatten(1), ord=norm, dim=1)
        assert torch.allclose(size, torch.full_like(size, eps), rtol=1e-5)  # a float32 norm over 64 terms, ~1e-6

        def margin(points):  # max_{j != y} z_j - z_y, read from the model itself
            logits = model(points)
            own = logits.gather(1, y[:, None]).squeeze(1)
            return logits.scatter(1, y[:, None], -torch.inf).max(1).values - own

        best = margin(x + delta)
        dual = {float("inf"): 1.0, 2.0: 2.0, 1.0: float("inf")}[norm]
        gain = torch.linalg.vector_norm((weight[targets] - weight[y]), ord=dual, dim=1)
        logits = model(x)
        expected = logits.gather(1, targets[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1) + eps * gain
        # Hoelder's bound is reached: float32 logits of order 10 (ulp ~1e-6) against logits plus
        # eps * gain from the read-off weights (atol 1e-4 above); 1e-3 is looser
        assert torch.allclose(best, expected, atol=1e-3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(50):  # no random perturbation of the same norm does better
            random = torch.randn(x.shape, generator=generator)
            random = eps * random / torch.linalg.vector_norm(random.flatten(1), ord=norm, dim=1).view(-1, 1, 1, 1)
            assert (margin(x + random) <= best + 1e-4).all()  # float32 margins of order 10: ulp ~1e-6
    assert affine_weights(trained("mlp")[0], x) is None


def test_decision_grid_of_a_known_linear_rule():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():  # logits (0, x1 - x2): class 1 exactly where x1 > x2
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, -1.0]]))
        model.bias.zero_()
    xs, ys, labels = decision_grid(model, (0.0, 1.0), resolution=50)
    assert labels.shape == (50, 50)
    expected = (xs[None, :] > ys[:, None]).astype(labels.dtype)
    assert np.array_equal(labels, expected)
    assert xs[0] == pytest.approx(0.01) and xs[-1] == pytest.approx(0.99)


def test_training_curve_draws_every_robust_column():
    history = pd.DataFrame({"epoch": [1, 2, 3], "loss": [1.0, 0.5, 0.3], "train_accuracy": [0.5, 0.7, 0.8],
                            "test_accuracy": [0.4, 0.6, 0.7], "robust_accuracy": [0.1, 0.2, 0.35]})
    figure = plots.plot_training_curve(history)
    lines = {line.get_label(): line for line in figure.axes[1].get_lines()}
    assert "robust accuracy" in lines
    assert np.allclose(lines["robust accuracy"].get_ydata(), [10, 20, 35])
    plots.close(figure)
    figure = plots.plot_training_curve(history.drop(columns="robust_accuracy"))
    assert len(figure.axes[1].get_lines()) == 2
    plots.close(figure)


# ----------------------------------------------------------------------------- per sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real two-job sweep (``advrun -m``), plus a failed job and an interrupted one beside them."""
    root = tmp_path_factory.mktemp("sweep") / "root"
    cache = tmp_path_factory.mktemp("sweep-cache")
    done = run_inprocess("-m", "attack.eps=0.05,0.1", *TINY, "report=true", "attack.steps=2", f"hydra.sweep.dir={root}",
                         cwd=tmp_path_factory.mktemp("cwd"), env={"ADVRUN_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "summary.csv").is_file()  # written at the end of the sweep
    jobs = find_jobs(root)
    assert len(jobs) == 2
    overrides = (jobs[0] / ".hydra" / "overrides.yaml").read_text()
    assert "- attack.eps=0.05\n" in overrides
    for name, eps, error in (("7_failed", "-1", "attack.eps: must be a finite number >= 0, got -1 <b>bold</b>"),
                             ("8_interrupted", "0.2", None)):
        shutil.copytree(jobs[0] / ".hydra", root / name / ".hydra")
        (root / name / ".hydra" / "overrides.yaml").write_text(overrides.replace("=0.05\n", f"={eps}\n"))
        (root / name / ".hydra" / "hydra.yaml").unlink(missing_ok=True)
        if error:
            (root / name / "error.txt").write_text(error + "\n")
    return root


def test_sweep_summary_lists_every_job_with_its_status(sweep):
    frame = write_sweep_report(sweep)
    assert list(frame["status"]) == ["ok", "ok", "failed", "incomplete"]
    assert list(frame["override:attack.eps"]) == ["0.05", "0.1", "-1", "0.2"]
    for record in frame[frame["status"] == "ok"].to_dict("records"):
        metrics = json.loads((sweep / record["job"] / "metrics.json").read_text())
        assert record["robust_accuracy"] == metrics["robust_accuracy"]
        assert record["eps"] == float(record["override:attack.eps"])
    assert "must be a finite number" in frame["error"].iloc[2]
    saved = pd.read_csv(sweep / "summary.csv", dtype={"override:attack.eps": str})
    assert list(saved["status"]) == list(frame["status"])
    assert saved["robust_accuracy"].iloc[:2].tolist() == pytest.approx(frame["robust_accuracy"].iloc[:2].tolist())
    table = markdown_table((sweep / "summary.md").read_text(), "Jobs")
    assert len(table) == 4 and list(table["status"]) == ["ok", "ok", "failed", "incomplete"]
    assert list(table["attack.eps"]) == ["0.05", "0.1", "-1", "0.2"]
    assert table["robust accuracy"].iloc[0] == with_interval(frame["n_robust"].iloc[0], frame["n_eval"].iloc[0])
    assert "95% Clopper-Pearson" in (sweep / "summary.md").read_text()
    assert "dataset.n_train=240" in (sweep / "summary.md").read_text()  # common overrides stated once
    assert_picture(sweep / "combined_curves.png")
    assert_svg(sweep / "combined_curves.svg")
    html = (sweep / "report.html").read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;" in html and "<b>" not in html
    links = [attrs["href"] for tag, attrs in parse_html(sweep / "report.html").tags if tag == "a"]
    assert len(links) == 4 and all((sweep / link.replace("%3D", "=")).is_file() for link in links)
    assert "This run failed" in (sweep / "7_failed" / "report.html").read_text()  # the failed job got its report


def test_a_job_whose_metrics_are_not_advruns_is_listed_as_failed(sweep, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(sweep, root)
    job = find_jobs(root)[0]
    (job / "metrics.json").write_text("[]")
    (job / "report.html").unlink()
    frame = write_sweep_report(root)
    assert list(frame["status"]) == ["failed", "ok", "failed", "incomplete"]
    assert frame["error"].iloc[0].startswith(f"{job / 'metrics.json'}: holds a JSON list, not advrun's metrics")


def test_combined_curves_draw_one_line_per_finished_job(sweep):
    curves = [(f"job {i}", pd.read_csv(job / "curve.csv")) for i, job in enumerate(find_jobs(sweep)[:2])]
    figure = plots.plot_combined_curves(curves)
    lines = figure.axes[0].get_lines()
    drawn = [rows for _, curve in curves for _, rows in curve.groupby("attack", sort=False)]  # attack, certified
    assert len(lines) == len(drawn) >= 2
    for line, rows in zip(lines, drawn):
        assert np.allclose(line.get_ydata(), 100 * rows.sort_values("eps")["robust_accuracy"])
        assert (line.get_linestyle() == "--") == is_certified(rows["attack"].iloc[0])
    plots.close(figure)


def test_advrun_report_rebuilds_a_sweep_and_refuses_other_folders(sweep, tmp_path):
    for name in ("summary.csv", "summary.md", "report.html"):
        (sweep / name).unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "advrun.reporting.cli", str(sweep)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert all((sweep / name).is_file() for name in ("summary.csv", "summary.md", "report.html"))
    assert len(pd.read_csv(sweep / "summary.csv")) == 4
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for target in (tmp_path / "empty", tmp_path / "missing"):
        done = subprocess.run([sys.executable, "-m", "advrun.reporting.cli", str(target)], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2
        assert done.stderr.strip().count("\n") == 0 and str(target) in done.stderr and "Traceback" not in done.stderr
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["advrun-report"] == "advrun.reporting.cli:main"


def test_ctrl_c_in_advrun_report_is_one_line_and_exit_130(digits_run, monkeypatch, capsys):
    from advrun.reporting import cli, report

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_run_report", interrupted)
    assert cli.main([str(digits_run)]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        f"advrun-report: interrupted (Ctrl-C); run it again to complete the report of {digits_run}"]


# ----------------------------------------------------------------------------- over seeds


def _job(root: Path, name: str, overrides: list[str], seed: int, n_eval: int, n_correct: int, n_robust: int,
         n_success: int | None = None) -> None:
    """A finished job folder with the metrics of the counts given (no training: only the files a summary reads)."""
    from advrun.runfolder import Metrics, RunFolder

    folder = RunFolder(root / name)
    folder.write_config(f"seed: {seed}\n")
    folder.file(RunFolder.OVERRIDES).write_text("".join(f"- {o}\n" for o in overrides))
    n_success = n_correct - n_robust if n_success is None else n_success
    metrics = Metrics(dataset="digits", n_train=100, n_test=n_eval, n_eval=n_eval, clean_accuracy=n_correct / n_eval,
                      attack="pgd", norm="linf", eps=0.1, robust_accuracy=n_robust / n_eval,
                      success_rate=n_success / n_correct, seed=seed,
                      counts={"n_correct": n_correct, "n_robust": n_robust, "n_eligible": n_correct,
                              "n_success": n_success})
    metrics.add_intervals()
    (folder.path / "metrics.json").write_text(json.dumps(metrics.to_json()))


def test_jobs_that_differ_only_in_their_seed_are_aggregated(tmp_path):
    from advrun.reporting.sweep import seed_groups
    from advrun.stats import clopper_pearson

    root = tmp_path / "sweep"
    robust = {("mlp", 0): 30, ("mlp", 1): 34, ("mlp", 2): 38, ("cnn", 0): 80, ("cnn", 1): 84}
    for number, ((model, seed), n_robust) in enumerate(robust.items()):
        _job(root, str(number), [f"model={model}", f"seed={seed}"], seed, 100, 90, n_robust)
    (root / "9").mkdir()  # a failed job is left out of the groups
    RunFolder = __import__("advrun.runfolder", fromlist=["RunFolder"]).RunFolder
    RunFolder(root / "9").write_config("seed: 5\n")
    RunFolder(root / "9").file(RunFolder.OVERRIDES).write_text("- model=mlp\n- seed=5\n")
    RunFolder(root / "9").write_error("attack.eps: bad")
    frame = write_sweep_report(root)
    assert frame["robust_accuracy_low"].iloc[0] == clopper_pearson(30, 100)[0]
    groups = pd.read_csv(root / "summary_by_seed.csv", dtype={"seeds": str})
    pd.testing.assert_frame_equal(groups, seed_groups(frame), check_dtype=False)
    assert groups["override:model"].tolist() == ["mlp", "cnn"] and groups["n_jobs"].tolist() == [3, 2]
    assert groups["seeds"].tolist() == ["0 1 2", "0 1"]
    mlp = groups.iloc[0]
    assert mlp["robust_accuracy_mean"] == pytest.approx(0.34)
    assert mlp["robust_accuracy_std"] == pytest.approx(np.std([0.30, 0.34, 0.38], ddof=1))
    assert mlp["robust_accuracy_pooled"] == pytest.approx(102 / 300)
    # the seeds share one evaluation set: the interval of one set of 100 samples, not of 300
    assert (mlp["robust_accuracy_low"], mlp["robust_accuracy_high"]) == pytest.approx(clopper_pearson(34, 100))
    assert mlp["success_rate_pooled"] == pytest.approx((60 + 56 + 52) / 270)
    assert groups["clean_accuracy_std"].tolist() == [0.0, 0.0]
    text = (root / "summary.md").read_text()
    table = markdown_table(text, "Over seeds")
    assert table["model"].tolist() == ["mlp", "cnn"] and table["jobs"].tolist() == ["3", "2"]
    assert table["robust accuracy differs from"].tolist() == ["2", "1"]  # 34% and 82% of 100: far apart
    assert table["robust accuracy mean ± std"].iloc[0] == "34.00% ± 4.00"
    assert table["robust accuracy pooled [95% interval]"].iloc[0] == with_interval(34, 100)
    assert "do not overlap" in text


def test_overlapping_intervals_are_not_called_a_difference():
    from advrun.reporting.sweep import differs_from, seed_groups

    frame = pd.DataFrame({"job": ["0", "1", "2"], "status": ["ok"] * 3, "override:model": ["a", "b", "c"],
                          "override:seed": ["0"] * 3, "seed": [0] * 3, "n_eval": [100] * 3,
                          "clean_accuracy": [0.9] * 3, "robust_accuracy": [0.40, 0.47, 0.65], "success_rate": [0.5] * 3,
                          "n_correct": [90] * 3, "n_robust": [40, 47, 65], "n_eligible": [90] * 3,
                          "n_success": [50, 43, 25]})
    groups = seed_groups(frame)
    assert groups["n_jobs"].tolist() == [1, 1, 1] and groups["robust_accuracy_std"].isna().all()
    # of 100: 40 [30.3, 50.3] and 47 [36.9, 57.2] overlap, 47 and 65 [54.8, 74.3] too; 40 and 65 do not
    assert differs_from(groups) == [[3], [], [1]]


def test_a_sweep_without_seeds_has_one_group_per_job_and_no_section(sweep):
    write_sweep_report(sweep)
    groups = pd.read_csv(sweep / "summary_by_seed.csv")
    assert groups["n_jobs"].tolist() == [1, 1]  # the two finished jobs
    assert "## Over seeds" not in (sweep / "summary.md").read_text()
    table = markdown_table((sweep / "summary.md").read_text(), "Jobs")
    frame = pd.read_csv(sweep / "summary.csv")
    assert table["robust accuracy"].iloc[0] == with_interval(int(frame["n_robust"].iloc[0]), int(frame["n_eval"].iloc[0]))
