"""A self-contained HTML report of scores and selections.

One file, no scripts, no network at view time: histograms and a scatter plot
are inline SVG, tables are plain HTML, and every text that comes from the
corpus or a manifest is HTML-escaped (a document holding `<script>` shows as
text).
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from data_efficient.stages import configs

_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
           "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")  # fmt: skip


@dataclasses.dataclass
class ScoreColumn:
  """One score per example, aligned with `Report.ids`."""

  name: str  # e.g. "Ask-LLM P(yes)"
  values: np.ndarray  # float [n]
  manifest: dict


@dataclasses.dataclass
class Selection:
  name: str  # sampler name
  ids: set[str]
  manifest: dict


@dataclasses.dataclass
class Report:
  title: str
  ids: list[str]
  texts: list[str]
  sources: list[str | None]
  scores: list[ScoreColumn]
  selections: list[Selection]
  notes: list[str] = dataclasses.field(default_factory=list)


def _e(text) -> str:
  return html.escape(str(text), quote=True)


def histogram_svg(
  values: np.ndarray, bins: int = 30, log_x: bool = False
) -> str:
  """Inline SVG histogram of the finite `values`."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if log_x:
    v = np.log10(v[v > 0])
  if not len(v):
    return "<p>(no finite values)</p>"
  counts, edges = np.histogram(v, bins=bins)
  w, h, pad = 480, 160, 30
  bar = (w - 2 * pad) / bins
  top = max(1, counts.max())
  rects = []
  for i, c in enumerate(counts):
    bh = (h - 2 * pad) * c / top
    x = pad + i * bar
    rects.append(
      f'<rect x="{x:.1f}" y="{h - pad - bh:.1f}" width="{bar - 1:.1f}" '
      f'height="{bh:.1f}" fill="{_COLORS[0]}"><title>{edges[i]:.4g} to '
      f"{edges[i + 1]:.4g}: {c}</title></rect>"
    )
  label = "log10 " if log_x else ""
  axis = (
    f'<text x="{pad}" y="{h - 8}" font-size="11">{label}{edges[0]:.3g}</text>'
    f'<text x="{w - pad}" y="{h - 8}" font-size="11" text-anchor="end">'
    f"{edges[-1]:.3g}</text>"
    f'<text x="{pad}" y="{pad - 10}" font-size="11">max count {top}</text>'
  )
  return (
    f'<svg width="{w}" height="{h}" role="img">{"".join(rects)}{axis}</svg>'
  )


def scatter_svg(
    x: np.ndarray, y: np.ndarray, groups: Sequence[str | None], x_name: str,
    y_name: str, log_x: bool = False,
) -> str:  # fmt: skip
  """Inline SVG scatter plot, coloured by group, with a legend."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if log_x:
    x = np.log10(np.maximum(x, 1e-30))
  ok = np.isfinite(x) & np.isfinite(y)
  w, h, pad = 520, 320, 40
  names = sorted({g or "(none)" for g in groups})
  color = {g: _COLORS[i % len(_COLORS)] for i, g in enumerate(names)}

  def scale(v, lo, hi, a, b):
    return a + (v - lo) / (hi - lo or 1.0) * (b - a)

  x0, x1 = (x[ok].min(), x[ok].max()) if ok.any() else (0, 1)
  y0, y1 = (y[ok].min(), y[ok].max()) if ok.any() else (0, 1)
  dots = []
  for xi, yi, g, k in zip(x, y, groups, ok, strict=True):
    if k:
      dots.append(
        f'<circle cx="{scale(xi, x0, x1, pad, w - pad):.1f}" '
        f'cy="{scale(yi, y0, y1, h - pad, pad):.1f}" r="2.5" '
        f'fill="{color[g or "(none)"]}" fill-opacity="0.6"/>'
      )
  legend = "".join(
    f'<text x="{w - pad}" y="{pad + 14 * i}" font-size="11" '
    f'text-anchor="end" fill="{color[g]}">{_e(g)}</text>'
    for i, g in enumerate(names)
  )
  axes = (
    f'<text x="{w / 2}" y="{h - 6}" font-size="11" text-anchor="middle">'
    f"{'log10 ' if log_x else ''}{_e(x_name)} ({x0:.3g} to {x1:.3g})</text>"
    f'<text x="12" y="{h / 2}" font-size="11" transform="rotate(-90 12 '
    f'{h / 2})" text-anchor="middle">{_e(y_name)} ({y0:.3g} to {y1:.3g})</text>'
  )
  return f'<svg width="{w}" height="{h}" role="img">{"".join(dots)}{legend}{axes}</svg>'


def _examples_table(
  report: Report, column: ScoreColumn, per_part: int = 3
) -> str:
  order = np.argsort(column.values, kind="stable")[::-1]
  n = len(order)
  parts = {
    "top": order[:per_part],
    "middle": order[max(0, n // 2 - per_part // 2) :][:per_part],
    "bottom": order[-per_part:][::-1],
  }
  rows = []
  for part, idx in parts.items():
    for i in idx:
      text = report.texts[i]
      short = text[:600] + ("…" if len(text) > 600 else "")
      rows.append(
        f"<tr><td>{part}</td><td>{column.values[i]:.4g}</td>"
        f"<td>{_e(report.sources[i] or '')}</td><td>{_e(report.ids[i])}</td>"
        f"<td><pre>{_e(short)}</pre></td></tr>"
      )
  return (
    "<table><tr><th>where</th><th>score</th><th>source</th><th>id</th>"
    f"<th>text</th></tr>{''.join(rows)}</table>"
  )


def _source_table(report: Report) -> str:
  sources = sorted({s or "(none)" for s in report.sources})
  all_src = [s or "(none)" for s in report.sources]
  by_id = dict(zip(report.ids, all_src, strict=True))
  header = "".join(f"<th>{_e(s)}</th>" for s in sources)

  def row(name, members):
    counts = {s: 0 for s in sources}
    for m in members:
      counts[by_id[m]] += 1
    total = max(1, len(members))
    cells = "".join(f"<td>{100 * counts[s] / total:.1f}%</td>" for s in sources)
    return f"<tr><td>{_e(name)}</td><td>{len(members)}</td>{cells}</tr>"

  rows = [row("whole corpus", report.ids)]
  rows += [row(sel.name, sel.ids) for sel in report.selections]
  return (
    f"<table><tr><th>set</th><th>examples</th>{header}</tr>"
    f"{''.join(rows)}</table>"
  )


def _overlap_table(report: Report) -> str:
  sels = report.selections
  header = "".join(f"<th>{_e(s.name)}</th>" for s in sels)
  rows = []
  for a in sels:
    cells = []
    for b in sels:
      union = len(a.ids | b.ids) or 1
      cells.append(f"<td>{len(a.ids & b.ids) / union:.2f}</td>")
    kept = len(a.ids) / max(1, len(report.ids))
    rows.append(
      f"<tr><td>{_e(a.name)}</td><td>{kept:.1%}</td>{''.join(cells)}</tr>"
    )
  return (
    "<p>Kept fraction, and overlap between selections (Jaccard index: "
    "shared / either).</p>"
    f"<table><tr><th>sampler</th><th>kept</th>{header}</tr>"
    f"{''.join(rows)}</table>"
  )


def _provenance(manifests: Mapping[str, dict]) -> str:
  parts = []
  for name, manifest in manifests.items():
    brief = {k: v for k, v in manifest.items() if k not in ("shards", "inputs")}
    parts.append(
      f"<details><summary>{_e(name)}</summary>"
      f"<pre>{_e(json.dumps(brief, indent=2, default=str))}</pre></details>"
    )
  return "".join(parts)


def _timings(manifests: Mapping[str, dict]) -> str:
  rows = []
  for name, m in manifests.items():
    seconds = m.get("seconds")
    if seconds is None and m.get("processes"):
      seconds = sum(p["stats"]["wall_seconds"] for p in m["processes"])
    rate = ""
    if m.get("processes"):
      rate = ", ".join(
        f"{p['stats']['docs_per_second']}" for p in m["processes"]
      )
    if seconds is not None:
      rows.append(
        f"<tr><td>{_e(name)}</td><td>{m.get('num_rows', '')}</td>"
        f"<td>{float(seconds):.1f}</td><td>{_e(rate)}</td></tr>"
      )
  return (
    "<table><tr><th>stage</th><th>rows</th><th>seconds</th><th>docs/s per "
    f"process</th></tr>{''.join(rows)}</table>"
  )


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top;font-size:13px}
pre{white-space:pre-wrap;max-width:640px;margin:0;font-size:12px}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.5em 1em}
"""


def render(report: Report, manifests: Mapping[str, dict]) -> str:
  """The whole HTML page."""
  body = [f"<h1>{_e(report.title)}</h1>"]
  body += [f'<p class="note">{_e(n)}</p>' for n in report.notes]
  body.append(f"<p>{len(report.ids)} examples.</p>")
  for col in report.scores:
    log_x = col.name.lower().startswith(("density", "ask-llm"))
    body.append(f"<h2>{_e(col.name)}</h2>")
    body.append(histogram_svg(col.values, log_x=log_x))
    body.append(_examples_table(report, col))
  if len(report.scores) >= 2:
    a, b = report.scores[0], report.scores[1]
    body.append(f"<h2>{_e(b.name)} against {_e(a.name)}</h2>")
    body.append(
      scatter_svg(
        a.values, b.values, report.sources, a.name, b.name, log_x=True
      )
    )
  if report.selections:
    body.append("<h2>Selections</h2>")
    body.append(_overlap_table(report))
  if any(report.sources):
    body.append("<h2>Sources: corpus against each selection</h2>")
    body.append(_source_table(report))
  body.append("<h2>Run times</h2>" + _timings(manifests))
  body.append("<h2>Provenance</h2>" + _provenance(manifests))
  return (
    "<!doctype html><html><head><meta charset='utf-8'>"
    f"<title>{_e(report.title)}</title><style>{_CSS}</style></head>"
    f"<body>{''.join(body)}</body></html>"
  )


def proportions(
  sources: Sequence[str | None], members: Sequence[int]
) -> dict[str, float]:
  """Share of each source among `members` (indices into `sources`)."""
  names = [sources[i] or "(none)" for i in members]
  total = max(1, len(names))
  return {s: names.count(s) / total for s in sorted(set(names))}


def total_variation_from_uniform(shares: Mapping[str, float], k: int) -> float:
  """Distance of source shares from an even split over k sources."""
  return (
    0.5 * sum(abs(shares.get(s, 0.0) - 1 / k) for s in shares)
    + 0.5 * (k - len(shares)) / k
  )


def from_dirs(
  corpus,
  *,
  scores: Sequence[str] = (),
  selections: Sequence[str] = (),
  title: str = "data_efficient report",
  limit: int | None = None,
  notes: Sequence[str] = (),
) -> tuple[Report, dict[str, dict]]:
  """Gathers a report from a corpus and stage output directories.

  Args:
    corpus: An opened `io.corpus.Corpus` (texts and sources).
    scores: `score` and `density` output directories.
    selections: `select` output directories.
    title: Page title.
    limit: Read only the corpus's first `limit` records (large corpora);
      scores of other ids are left out of the page.
    notes: Remarks shown at the top (e.g. which weights were random).

  Returns:
    (report, manifests by name) for `render`.
  """
  import itertools

  from data_efficient.io import results
  from data_efficient.io import scores as scores_lib

  records = itertools.islice(corpus.records(), limit)
  ids, texts, sources = [], [], []
  for r in records:
    ids.append(r.id)
    texts.append(r.text)
    sources.append(r.source)
  index = {i: n for n, i in enumerate(ids)}
  manifests: dict[str, dict] = {}
  columns = []
  for path in scores:
    s = scores_lib.read_scores(path)
    values = np.full(len(ids), np.nan)
    for i, v in zip(s.ids, s.values, strict=True):
      if i in index:
        values[index[i]] = v
    if s.kind == scores_lib.QUALITY:
      name = "Ask-LLM P(yes)" if s.column == "p_yes" else f"Ask-LLM {s.column}"
    else:
      config = s.manifest.get("run_config", {})
      name = f"density ({config.get('estimator')}, {config.get('kernel')})"
    columns.append(ScoreColumn(name, values, s.manifest))
    manifests[f"{s.manifest.get('stage')}: {path}"] = s.manifest
    for key in ("embeddings_manifest",):
      if s.manifest.get(key):
        manifests[f"embed: {s.manifest['run_config'].get('embeddings')}"] = (
          s.manifest[key]
        )
  chosen = []
  for path in selections:
    manifest = results.read_manifest(path)
    kept = set(results.read_results(path, columns=["id"]).column(0).to_pylist())
    # Named by directory: two selections may share a sampler.
    name = os.path.basename(os.path.normpath(path))
    chosen.append(Selection(name, kept & set(index), manifest))
    manifests[f"select {manifest.get('sampler')}: {path}"] = manifest
  report = Report(title, ids, texts, sources, columns, chosen, list(notes))
  return report, manifests


def report(config: configs.ReportConfig) -> Report:
  """The `report` stage: writes the HTML page; returns what it shows."""
  page, manifests = from_dirs(
    config.corpus.open(),
    scores=config.scores,
    selections=config.selections,
    title=config.title,
    limit=config.limit,
    notes=config.notes,
  )
  with open(config.output, "w", encoding="utf-8") as f:
    f.write(render(page, manifests))
  return page
