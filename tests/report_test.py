"""Tests of the HTML report: escaping, content, and a real browser render."""

import html as html_lib
import json
import os
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest

from data_efficient import report
from data_efficient.io import records, results
from data_efficient.io import scores as scores_lib
from data_efficient.stages import askllm, configs, perplexity, sampling, select

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quotes"'


def _page():
  n = 30
  rng = np.random.default_rng(0)
  page = report.Report(
    title="t <b>",
    ids=[f"d{i}" for i in range(n)],
    texts=[HOSTILE if i == 0 else f"text {i}" for i in range(n)],
    sources=["news" if i % 3 else "junk" for i in range(n)],
    problems=[None] * n,
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


def _chromium(tmp_path) -> list[str]:
  """Headless Chromium's command line (skips the test without it)."""
  browser = shutil.which("chromium") or shutil.which("chromium-browser")
  if browser is None:
    pytest.skip(
      "Debian's chromium is not installed (scripts/test.sh installs it)"
    )
  return [browser, "--headless", "--no-sandbox", "--disable-gpu",
          "--disable-quic", "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync",
          f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip


def _screenshot(flags, page, shot, width, height):
  subprocess.run(
      [*flags, f"--screenshot={shot}", f"--window-size={width},{height}",
       page.as_uri()],
      capture_output=True, timeout=120, check=True,
  )  # fmt: skip
  keep = os.environ.get("REPORT_SCREENSHOTS")
  if keep:  # a directory, for a person to look at
    os.makedirs(keep, exist_ok=True)
    shutil.copy(shot, keep)


def test_report_renders_in_headless_chromium(tmp_path):
  flags = _chromium(tmp_path)
  page = tmp_path / "report.html"
  page.write_text(report.render(_page(), {"score": {"stage": "score"}}))
  dom = subprocess.run(
      [*flags, "--dump-dom", page.as_uri()],
      capture_output=True, text=True, timeout=120, check=True,
  ).stdout  # fmt: skip
  assert "<svg" in dom and "Jaccard" in dom
  assert "<script" not in dom  # the hostile text stayed text
  assert 'alert("x")' in dom.replace("&quot;", '"')
  shot = tmp_path / "shot.png"
  _screenshot(flags, page, shot, 1200, 2400)
  assert shot.stat().st_size > 20_000


# A corpus as a user meets it: empty and blank texts, a repeated id, a 5 MB
# line, an unbroken Usenet `Path:` header and url, a C4-style url id,
# unreadable records kept by on_error='mark', and HTML in a text.
LONG_ID = "https://example.com/" + "page/" * 600
PATH_HEADER = "Path: " + "!".join(f"news{i}.cs.example.edu" for i in range(300))
URL_TEXT = "see https://example.org/?q=" + "a%2Fb" * 1500
BIG = "x" * 5_000_000
DUPLICATE = "twice"


def _hostile_corpus(path):
  """Writes the corpus; returns each record's (id, problem, P(yes), NLL)."""
  lines = [
    ({"id": "big", "text": BIG}, None, 0.9, 2.0),
    ({"id": "path", "text": PATH_HEADER}, None, 0.8, 3.0),
    ({"id": "url", "text": URL_TEXT}, None, 0.7, 4.0),
    ({"id": DUPLICATE, "text": "the first of two"}, None, 0.6, 5.0),
    ({"id": LONG_ID, "text": ""}, records.EMPTY, 0.02, np.nan),
    ({"id": "blank", "text": " \n "}, records.WHITESPACE, 0.02, np.nan),
    ({"id": DUPLICATE, "text": "the second"}, records.DUPLICATE_ID, 0.99, 1.0),
    ("{not json", records.MALFORMED_JSON, 0.02, np.nan),
    ({"id": "nt", "text": 5}, records.NOT_A_STRING, 0.02, np.nan),
    ({"id": "html", "text": HOSTILE}, None, 0.85, 6.0),
  ]
  lines += [
    (
      {"id": f"d{i}", "text": f"plain text number {i}"},
      None,
      0.4 - i / 100,
      7.0 + i,
    )  # fmt: skip
    for i in range(20)
  ]
  rows = []
  with open(path, "w") as f:
    for n, (record, problem, p_yes, nll) in enumerate(lines, start=1):
      if isinstance(record, dict):
        record["src"] = ("news", "usenet", "web")[n % 3]
        f.write(json.dumps(record) + "\n")
        rows.append((record["id"], problem, p_yes, nll))
      else:
        f.write(record + "\n")
        rows.append((f"{path.name}:{n}", problem, p_yes, nll))
  return rows


def _stage_dir(path, schema, rows, column, values, manifest):
  """A score directory as a model stage writes it: one row per record in
  corpus order, the manifest last."""
  run_config = manifest["run_config"]
  w = results.ResultWriter(path, schema, run_config=run_config)
  n = len(rows)
  columns = {f.name: np.zeros(n, f.type.to_pandas_dtype()) for f in schema}
  columns.update(
    id=[r[0] for r in rows],
    problem=[r[1] for r in rows],
    **{column: np.asarray(values, np.float32)},
  )
  w.write(columns)
  w.close()
  results.write_manifest(path, manifest)


@pytest.fixture
def hostile_report(tmp_path):
  """The report over the hostile corpus with `score` and `perplexity`
  directories: (html, Report, rows)."""
  corpus = tmp_path / "c.jsonl"
  rows = _hostile_corpus(corpus)
  model = {"model": "tiny", "checkpoint": None, "dtype": "float32"}
  _stage_dir(tmp_path / "q", askllm.schema(), rows, "p_yes",
             [r[2] for r in rows],
             {"stage": "score", "score_column": "p_yes", "random_weights": True,
              "run_config": {"stage": "score", "max_length": 512, **model}},
             )  # fmt: skip
  _stage_dir(tmp_path / "p", perplexity.schema(), rows, "mean_nll",
             [r[3] for r in rows],
             {"stage": "perplexity", "score_column": "mean_nll",
              "random_weights": True,
              "run_config": {"stage": "perplexity", "max_tokens": 64,
                             **model}},
             )  # fmt: skip
  out = tmp_path / "report.html"
  page = report.report(
    configs.ReportConfig(
      corpus=configs.CorpusConfig(
        input=str(corpus), id_field="id", source_field="src", on_error="mark"
      ),
      scores=(str(tmp_path / "q"), str(tmp_path / "p")),
      output=str(out),
    )
  )
  return out.read_text(), page, rows


def _section(html, heading):
  """The page from the <h2> starting with `heading` to the next <h2>."""
  start = html.index(f"<h2>{heading}")
  end = html.find("<h2>", start + 1)
  return html[start : end if end > 0 else None]


def test_each_score_is_labelled_by_its_stage(hostile_report):
  html, page, _ = hostile_report
  assert [c.name for c in page.scores] == [
    "Ask-LLM: P(yes) (tiny, random weights, prompt of at most 512 tokens)",
    "Perplexity filter: mean NLL per target token (tiny, random weights, "
    "first 64 tokens)",
  ]
  assert "density" not in html.lower()
  assert "--sampler perplexity</code>: lowest mean token NLL" in html


def _scores(kind, column, run_config, **manifest):
  return scores_lib.ScoreSource(
    kind, "dir", column, {"run_config": run_config, **manifest}
  )


@pytest.mark.parametrize(
  "scores, name",
  [
    (_scores(scores_lib.QUALITY, "p_yes_renorm", {"model": None, "checkpoint":
      "gs://b/flan_t5_xl/checkpoint_1138000/", "max_length": 512}),
     "Ask-LLM: P(yes) / (P(yes) + P(no)) (checkpoint_1138000, prompt of at "
     "most 512 tokens)"),
    (_scores(scores_lib.DENSITY, "density", {"estimator": "sketch",
      "kernel": "lsh", "rows": 1000, "buckets": 20000, "bandwidth": None},
      embeddings_manifest={"run_config": {"model": "sentence_t5_base"}}),
     "DENSITY: density (kernel sum) (sketch R=1000 x B=20000, lsh kernel, "
     "sentence_t5_base embeddings)"),
    (_scores(scores_lib.DENSITY, "density", {"estimator": "exact",
      "kernel": "gaussian", "bandwidth": 0.25}),
     "DENSITY: density (kernel sum) (exact, gaussian kernel, bandwidth 0.25)"),
    (_scores(scores_lib.SEMDEDUP, "semdedup_similarity",
      {"kmeans": {"clusters": 10000, "spherical": True}, "eps": 0.1}),
     "SemDeDup: similarity to a more outlying cluster-mate (k=10000, cosine, "
     "eps 0.1)"),
    (_scores(scores_lib.PROTOTYPES, "centroid_distance",
      {"kmeans": {"clusters": 50, "spherical": False}}),
     "SSL prototypes: distance to the nearest centroid (k=50, euclidean)"),
  ],
)  # fmt: skip
def test_score_name_says_stage_and_settings(scores, name):
  assert report.score_name(scores) == name


def test_unscored_and_left_out_rows_never_rank(hostile_report):
  html, page, rows = hostile_report
  ppl = _section(html, "Perplexity filter")
  ranked, unranked = ppl.split("<h3>Not ranked")
  # Empty, blank and unreadable records have no perplexity; the second
  # holder of an id is left out by select: none of them ranks.
  assert "1 of 25:<br><b>26</b>" in ranked  # d19, not a NaN
  assert "25 of 25:<br><b>2</b>" in ranked  # big
  assert ">nan<" not in ranked.lower() and "twice · problem" not in ranked
  assert ": 5 examples</h3>" in unranked
  no_score = (records.EMPTY, records.WHITESPACE, records.MALFORMED_JSON,
              records.NOT_A_STRING)  # fmt: skip
  for problem in no_score:
    assert f"<tr><td>{problem}</td><td>no score</td><td>1</td>" in unranked
  assert (
    "<td>duplicate_id</td><td>left out by select</td><td>1</td>" in unranked
  )
  assert "c.jsonl:8" in unranked and "25 of 30 examples ranked" in ppl
  # Ask-LLM scored the empty prompts: they rank; unreadable records do not.
  assert "27 of 30 examples ranked" in _section(html, "Ask-LLM")


def test_a_repeated_id_keeps_each_records_score(hostile_report):
  _, page, _ = hostile_report
  first, second = [i for i, x in enumerate(page.ids) if x == DUPLICATE]
  p_yes, nll = page.scores
  assert (p_yes.values[first], nll.values[first]) == (pytest.approx(0.6), 5.0)
  assert (p_yes.values[second], nll.values[second]) == (
    pytest.approx(0.99),
    1.0,
  )


def test_long_texts_are_cut_to_an_excerpt(hostile_report):
  html, _, _ = hostile_report
  assert len(html) < 200_000  # not the 5 MB line
  assert "(5,000,000 characters; the first 600 shown)" in html
  assert f"({len(LONG_ID):,} characters; the first 200 shown)" in html
  assert "<script" not in html and "&lt;script&gt;" in html


def test_plots_have_ticks_and_axis_titles(hostile_report):
  html, _, _ = hostile_report
  assert html.count('<svg class="plot"') == 3  # two histograms, one scatter
  assert "P(yes) (log scale)</text>" in html
  assert "mean NLL per target token</text>" in html
  assert ">examples</text>" in html
  # P(yes) spans 0.02 to 0.9: ticks at 1-2-5 values, as numbers.
  assert all(f">{t}</text>" in html for t in ("0.02", "0.05", "0.1", "0.5"))
  assert report._ticks(0, 7).tolist() == [0, 2, 4, 6]
  assert report._ticks(-0.3, 0.3).tolist() == [-0.2, 0, 0.2]


def test_long_lines_wrap_at_every_width_in_chromium(tmp_path, hostile_report):
  """The page never scrolls sideways, at a phone's width or a desktop's."""
  flags = _chromium(tmp_path)
  html, _, _ = hostile_report
  page = tmp_path / "hostile.html"
  page.write_text(html)
  widths = (420, 1600)
  # Headless windows are at least 500 px wide: frames of each width measure
  # the page (srcdoc frames share the probe's origin, so it can read them).
  frames = "".join(
    f'<iframe style="width:{w}px;height:900px;border:0" '
    f'srcdoc="{html_lib.escape(html, quote=True)}"></iframe>'
    for w in widths
  )
  probe = tmp_path / "probe.html"
  probe.write_text(
    f"<!doctype html><body>{frames}<script>onload = () => {{"
    "document.body.dataset.widths = JSON.stringify([...document"
    ".querySelectorAll('iframe')].map(f => [f.contentDocument"
    ".documentElement.scrollWidth, f.contentDocument.documentElement"
    ".clientWidth]))}</script></body>"
  )
  dom = subprocess.run(
      [*flags, "--window-size=1700,1000", "--dump-dom", probe.as_uri()],
      capture_output=True, text=True, timeout=120, check=True,
  ).stdout  # fmt: skip
  measured = json.loads(html_lib.unescape(
    dom.split('data-widths="')[1].split('"')[0]
  ))  # fmt: skip
  for width, (scroll, client) in zip(widths, measured, strict=True):
    assert width - 20 <= client <= width  # less a scrollbar
    assert scroll == client, f"scrolls sideways at {width} px"
  for width in widths:
    shot = tmp_path / f"hostile_{width}.png"
    _screenshot(flags, page, shot, width, 3000)
    assert shot.stat().st_size > 20_000


def _sharded_scores(path, ids, values, process_count, rows_per_shard):
  """A `score` directory of `ids` written by `process_count` processes, each
  a contiguous part in writes of 100 rows."""
  schema = pa.schema([("id", pa.string()), ("problem", pa.string()),
                      ("p_yes", pa.float32())])  # fmt: skip
  parts = np.array_split(np.arange(len(ids)), process_count)
  for process, part in enumerate(parts):
    w = results.ResultWriter(path, schema, run_config={"stage": "score"},
                             process_index=process, process_count=process_count,
                             rows_per_shard=rows_per_shard)  # fmt: skip
    for rows in np.array_split(part, max(1, len(part) // 100)):
      w.write({"id": [ids[i] for i in rows], "problem": [None] * len(rows),
               "p_yes": values[rows]})  # fmt: skip
    w.close()
  results.write_manifest(path, {"stage": "score", "score_column": "p_yes"})


@pytest.mark.parametrize("process_count, rows_per_shard", [(1, 50_000),
                                                           (3, 300)])  # fmt: skip
def test_a_large_run_renders_a_bounded_id_keyed_sample(
  tmp_path, monkeypatch, process_count, rows_per_shard
):
  n, size, seed = 5_000, 500, 7
  monkeypatch.setattr(report, "_BATCH_RECORDS", 256)  # prune many times
  corpus = tmp_path / "c.jsonl"
  ids = [f"https://example.com/{i}" for i in range(n)]
  with open(corpus, "w") as f:
    for k, i in enumerate(ids):
      f.write(json.dumps({"url": i, "text": f"t{k}", "src": "ab"[k % 2]}))
      f.write("\n")
  p_yes = np.linspace(0, 1, n).astype(np.float32)
  _sharded_scores(tmp_path / "q", ids, p_yes, process_count, rows_per_shard)
  select.select(
    configs.SelectConfig(
      scores=(str(tmp_path / "q"),), sampler="askllm-topk", k=1_000,
      output=str(tmp_path / "s"),
    )
  )  # fmt: skip
  out = tmp_path / "r.html"
  page = report.report(
    configs.ReportConfig(
      corpus=configs.CorpusConfig(
        input=str(corpus), id_field="url", source_field="src"
      ),
      scores=(str(tmp_path / "q"),),
      selections=(str(tmp_path / "s"),),
      sample_rows=size,
      seed=seed,
      output=str(out),
    )
  )
  # The ids of the `size` smallest hashes, in corpus order, whatever the
  # directory's shards; their own scores; rows held never exceed `size`.
  hashes = sampling.id_uniforms(ids, seed)
  chosen = np.sort(np.argsort(hashes, kind="stable")[:size])
  assert page.ids == [ids[i] for i in chosen]
  assert len(page.texts) == len(page.scores[0].values) == size
  np.testing.assert_array_equal(page.scores[0].values, p_yes[chosen])
  top = {ids[i] for i in chosen if i >= n - 1_000}
  assert page.selections[0].ids == top
  html = out.read_text()
  assert f"<p>{n} examples.</p>" in html  # exact totals
  assert f"{n} of the directory's {n} rows ranked" in html
  assert "histogram of a 500-row id-keyed sample of 5,000 rows" in html
  assert "<td>s</td><td>20.0%</td>" in html  # kept: 1,000 of 5,000
  assert "<td>s</td><td>1000</td>" in html and f"<td>{n}</td>" in html
  assert "500 of them ranked" in html and "1 of 500:" in html


def test_the_sample_holds_bounded_memory_however_many_records(monkeypatch):
  import tracemalloc

  monkeypatch.setattr(report, "_BATCH_RECORDS", 1_024)

  def peak(n):
    corpus = (records.Record(f"u{i}", "text", source="web") for i in range(n))
    tracemalloc.start()
    sample, population = report._sample(corpus, 200, seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(sample) == 200 and population.records == n
    return peak

  assert peak(64_000) < 1.5 * peak(8_000)  # 8 times the records
