"""The report of a real small search, in real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import itertools
import os
import shutil

import pandas as pd
import pytest

from peft_search.reports.choice import Limit, choose_best
from peft_search.reports.html import write_report
from peft_search.reports.table import load_trials
from peft_search.search.results.layout import ResultsDir
from tests import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("CI"), reason="needs Debian's chromium (CI installs it)"
    ),
]


@pytest.fixture(scope="module")
def page(small_search):
    sync_api = (
        pytest.importorskip("playwright.sync_api")
        if not os.environ.get("CI")
        else __import__("playwright.sync_api", fromlist=["sync_playwright"])
    )
    _, search_dir = small_search
    report = write_report(search_dir, search_dir / "browser-report.html")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        events = {"errors": [], "requests": []}
        tab.on("console", lambda m: events["errors"].append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: events["errors"].append(str(e)))
        tab.on("request", lambda r: events["requests"].append(r.url))
        tab.goto(report.as_uri())
        tab.wait_for_selector("#pareto-trainable_params .main-svg")
        yield tab, events, search_dir
        browser.close()


def test_loads_offline_without_errors_and_renders_every_chart(page):
    tab, events, search_dir = page
    assert events["errors"] == []
    assert [u for u in events["requests"] if not u.startswith("file://")] == []
    charts = tab.locator("section.chart")
    assert charts.count() >= 5
    for i in range(charts.count()):
        chart = charts.nth(i)
        assert chart.locator(".main-svg").count() > 0, chart.get_attribute("id")
    # The 2-D fronts draw real points: one marker per complete trial, plus the front's own markers.
    complete = (pd.read_parquet(search_dir / "trials.parquet")["status"] == "complete").sum()
    assert tab.locator("#pareto-trainable_params .scatterlayer .point").count() >= complete
    # Each accuracy carries its 95 % interval as an error bar (drawn by plotly: one per complete trial).
    assert tab.locator("#pareto-trainable_params .errorbar .yerror").count() == complete
    # Units a person reads: memory in GiB or MiB (never plotly's SI "1.2B" bytes), accuracy in percent.
    memory = tab.locator("#pareto-peak_memory_bytes .xtitle").text_content()
    assert memory in ("peak memory (GiB)", "peak memory (MiB)")
    assert tab.locator("#pareto-trainable_params .ytitle").text_content() == "held-out accuracy (%)"
    ticks = [t for t in tab.locator("#pareto-trainable_params .ytick text").all_text_contents() if t.strip()]
    assert ticks and all(t.endswith("%") for t in ticks)
    assert tab.locator("#hypervolume .ytitle").text_content() == "hypervolume (% of the final front's)"
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_table_has_one_row_per_trial_and_filters(page):
    tab, _, search_dir = page
    trials = pd.read_parquet(search_dir / "trials.parquet")
    assert tab.locator("#trials tbody tr").count() == len(trials)
    heading = tab.locator("#trials th", has_text="held-out accuracy")
    column = int(heading.get_attribute("data-col"))
    heading.click()
    heading.click()  # second click: descending
    best = trials[trials["status"] == "complete"]["accuracy"].max()
    first_accuracy = tab.locator("#trials tbody tr").first.locator("td").nth(column).get_attribute("data-v")
    assert float(first_accuracy) == pytest.approx(best)
    # Trials without an accuracy (failed, infeasible) sort last, whichever the direction.
    missing = int(trials["accuracy"].isna().sum())
    last = [
        tab.locator("#trials tbody tr").nth(-1 - i).locator("td").nth(column).get_attribute("data-v")
        for i in range(missing)
    ]
    assert missing > 0 and last == [""] * missing
    tab.fill("#filter", "infeasible")
    assert tab.locator("#trials tbody tr:visible").count() == (trials["status"] == "infeasible").sum()
    tab.fill("#filter", "")


def test_budget_picker_agrees_with_best(page):
    """One input per objective (a max for minimised metrics, a min for maximised; bytes in MiB), ranked as
    ``best`` ranks."""
    tab, _, search_dir = page
    trials = load_trials(search_dir)
    objectives = trials.attrs["objectives"]
    assert [
        tab.locator(f"#{'max' if o.mode == 'min' else 'min'}-{o.metric}").count() for o in objectives
    ] == [1] * len(objectives)
    done = trials[trials["status"] == "complete"]
    limits = [
        (None, None, None),
        (float(done["trainable_params"].min()), None, None),
        (None, float(done["peak_memory_bytes"].median()) / 2**20, None),
        (None, None, float(done["accuracy"].median())),
    ]
    correct = ResultsDir(search_dir).correct_by_trial()
    assert correct  # the page's default rule is tolerance auto, on these per-row predictions
    for (max_params, max_mib, min_accuracy), tolerance in itertools.product(limits, ["auto", "0"]):
        tab.select_option("#tolerance", tolerance)
        tab.fill("#max-trainable_params", "" if max_params is None else str(max_params))
        tab.fill("#max-peak_memory_bytes", "" if max_mib is None else str(max_mib))
        tab.fill("#min-accuracy", "" if min_accuracy is None else str(min_accuracy))
        given = [
            Limit("trainable_params", "<=", max_params) if max_params is not None else None,
            Limit("peak_memory_bytes", "<=", max_mib * 2**20) if max_mib is not None else None,
            Limit("accuracy", ">=", min_accuracy) if min_accuracy is not None else None,
        ]
        expected = choose_best(
            trials,
            objectives,
            [g for g in given if g is not None],
            tolerance="auto" if tolerance == "auto" else 0,
            correct=correct,
        )
        shown = tab.locator("#choice").get_attribute("data-trial")
        assert shown == ("" if expected.trial is None else expected.trial["trial_id"])


def test_learning_curves_show_the_front_and_the_table_links_the_rest(page):
    tab, _, search_dir = page
    trials = pd.read_parquet(search_dir / "trials.parquet")
    complete = trials[trials["status"] == "complete"]
    assert complete["learning_curve"].notna().all()
    shown = tab.evaluate(
        "() => document.getElementById('curves-plot').data"
        ".filter((t) => t.mode === 'lines').map((t) => [t.meta, t.visible === true])"
    )
    assert {t for t, _ in shown} == set(complete["trial_id"].astype(str))
    hidden = [t for t, visible in shown if not visible]
    assert len(hidden) < len(shown)  # the front's curves are drawn at once
    drawn = tab.locator("#curves .scatterlayer .trace").count()
    if hidden:  # a trial off the front: its table link draws its curve
        tab.locator(f'a.curve-link[data-trial="{hidden[0]}"]').click()
        tab.wait_for_function(
            "(id) => document.getElementById('curves-plot').data.some((t) => t.meta === id && t.visible === true)",
            arg=hidden[0],
        )
        assert tab.locator("#curves .scatterlayer .trace").count() > drawn
