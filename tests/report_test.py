"""Tests of the HTML report: escaping, content, and a real browser render."""

import json
import os
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest

from data_efficient import report
from data_efficient.io import results
from data_efficient.stages import configs, select

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quotes"'


def _page():
  n = 30
  rng = np.random.default_rng(0)
  page = report.Report(
    title="t <b>",
    ids=[f"d{i}" for i in range(n)],
    texts=[HOSTILE if i == 0 else f"text {i}" for i in range(n)],
    sources=["news" if i % 3 else "junk" for i in range(n)],
    scores=[
      report.ScoreColumn("Ask-LLM P(yes)", rng.random(n), {}),
      report.ScoreColumn("density", rng.random(n) * 10 + 1, {}),
    ],
    selections=[
      report.Selection("random", {"d1", "d2", "d3"}, {}),
      report.Selection("density-ips", {"d2", "d3", "d4"}, {}),
    ],
    notes=["random weights <i>"],
  )
  # Put the hostile document at the top of the first score.
  page.scores[0].values[0] = 2.0
  return page


def test_corpus_text_is_escaped():
  html = report.render(_page(), {"score": {"stage": "score", "note": HOSTILE}})
  assert "<script" not in html and "onerror=alert(1)>" not in html
  assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
  assert "t &lt;b&gt;" in html and "random weights &lt;i&gt;" in html


def test_page_has_plots_tables_and_source_shares():
  html = report.render(_page(), {})
  assert html.count("<svg") == 3  # two histograms and the scatter plot
  assert "Jaccard" in html and "0.50" in html  # |{d2,d3}| / |{d1..d4}|
  shares = report.proportions(["a", "b", "a", None], [0, 1, 2, 3])
  assert shares == {"(none)": 0.25, "a": 0.5, "b": 0.25}
  assert report.total_variation_from_uniform({"a": 1.0}, 2) == 0.5


def _write(path, stage, ids, column, values, extra=None):
  schema = pa.schema([("id", pa.string()), ("problem", pa.string()),
                      (column, pa.float32())])  # fmt: skip
  w = results.ResultWriter(path, schema, run_config={"stage": stage})
  w.write({"id": ids, "problem": [None] * len(ids), column: np.asarray(values)})
  w.close()
  results.write_manifest(path, {"stage": stage, **(extra or {})})


def test_report_stage_from_stage_directories(tmp_path):
  corpus = tmp_path / "c.jsonl"
  ids = [f"d{i}" for i in range(12)]
  with open(corpus, "w") as f:
    for i in ids:
      f.write(json.dumps({"id": i, "text": HOSTILE, "src": "web"}) + "\n")
  _write(tmp_path / "q", "score", ids, "p_yes", np.linspace(0, 1, 12),
         {"score_column": "p_yes"})  # fmt: skip
  _write(tmp_path / "d", "density", ids, "density", np.arange(1, 13))
  selection = select.select(
    configs.SelectConfig(
      scores=(str(tmp_path / "q"),),
      sampler="askllm-topk",
      k=3,
      output=str(tmp_path / "s"),
    )
  )
  assert selection == results.read_manifest(tmp_path / "s")
  out = tmp_path / "r.html"
  page = report.report(
    configs.ReportConfig(
      corpus=configs.CorpusConfig(
        input=str(corpus), id_field="id", source_field="src"
      ),
      scores=(str(tmp_path / "q"), str(tmp_path / "d")),
      selections=(str(tmp_path / "s"),),
      output=str(out),
    )
  )
  assert page.ids == ids
  html = out.read_text()
  assert "<script" not in html and "askllm-topk" in html and "25.0%" in html


def test_report_renders_in_headless_chromium(tmp_path):
  browser = shutil.which("chromium") or shutil.which("chromium-browser")
  if browser is None:
    pytest.skip(
      "Debian's chromium is not installed (scripts/test.sh installs it)"
    )
  page = tmp_path / "report.html"
  page.write_text(report.render(_page(), {"score": {"stage": "score"}}))
  flags = [browser, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
  dom = subprocess.run(
      [*flags, "--dump-dom", page.as_uri()],
      capture_output=True, text=True, timeout=120, check=True,
  ).stdout  # fmt: skip
  assert "<svg" in dom and "Jaccard" in dom
  assert "<script" not in dom  # the hostile text stayed text
  assert 'alert("x")' in dom.replace("&quot;", '"')
  shot = tmp_path / "shot.png"
  subprocess.run(
      [*flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
      capture_output=True, timeout=120, check=True,
  )  # fmt: skip
  assert shot.stat().st_size > 20_000
  keep = os.environ.get("REPORT_SCREENSHOT")
  if keep:  # for a person to look at
    shutil.copy(shot, keep)
