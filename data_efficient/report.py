"""A self-contained HTML report of scores and selections.

One file, no scripts, no network at view time: histograms and a scatter plot
are inline SVG with labelled axes, tables are plain HTML, and every text that
comes from the corpus or a manifest is HTML-escaped (a document holding
`<script>` shows as text). Long texts are cut to an excerpt and wrap inside
their cells, so no line widens the page.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import itertools
import json
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_efficient.io import paths, records, results
from data_efficient.io import scores as scores_lib
from data_efficient.stages import configs, sampling

_COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
           "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")  # fmt: skip

# Characters of a text, and of an id, shown before the rest is cut.
_TEXT_CHARS, _ID_CHARS = 600, 200
# Axis titles of the score columns.
_AXIS_TITLES = {
  "p_yes": "P(yes)",
  "log_p_yes": "log P(yes)",
  "p_yes_renorm": "P(yes) / (P(yes) + P(no))",
  "mean_nll": "mean NLL per target token",
  "perplexity": "perplexity",
  "density": "density (kernel sum)",
  "semdedup_similarity": "similarity to a more outlying cluster-mate",
  "centroid_distance": "distance to the nearest centroid",
}
# Columns spanning orders of magnitude: plotted on a log scale when positive.
_LOG_COLUMNS = frozenset({"p_yes", "density", "perplexity"})
_STAGE_NAMES = {
  scores_lib.QUALITY: "Ask-LLM",
  scores_lib.PERPLEXITY: "Perplexity filter",
  scores_lib.DENSITY: "DENSITY",
  scores_lib.SEMDEDUP: "SemDeDup",
  scores_lib.PROTOTYPES: "SSL prototypes",
}


@dataclasses.dataclass
class ScoreColumn:
  """One score per example, aligned with `Report.ids` (NaN: no score)."""

  name: str  # heading: stage, score and settings (see `score_name`)
  values: np.ndarray  # float [n]
  manifest: dict
  column: str = "score"  # the directory's score column, e.g. "p_yes"
  kind: str | None = None  # `io.scores` kind, e.g. scores_lib.QUALITY
  # Exact over the whole directory, shown when `values` is of a sample.
  rows: int | None = None
  ranked_rows: int | None = None  # finite scores select does not leave out


@dataclasses.dataclass
class Selection:
  name: str  # sampler name
  ids: set[str]
  manifest: dict


@dataclasses.dataclass(frozen=True)
class Population:
  """Exact counts over every corpus record read, where the report's examples
  are an id-keyed sample of them."""

  records: int
  problems: Mapping[str, int]  # records per problem category
  seed: int  # of the sample's id hash (`sampling.id_uniforms`)


@dataclasses.dataclass
class Report:
  title: str
  ids: list[str]
  texts: list[str]
  sources: list[str | None]
  problems: list[str | None]  # `Record.problem` of each example
  scores: list[ScoreColumn]
  selections: list[Selection]
  notes: list[str] = dataclasses.field(default_factory=list)
  population: Population | None = None  # None: the examples are all read


def _e(text) -> str:
  return html.escape(str(text), quote=True)


def _cut(text: str, limit: int) -> str:
  """`text` escaped, cut after `limit` characters with its length stated."""
  if len(text) <= limit:
    return _e(text)
  return (
    f'{_e(text[:limit])}… <span class="meta">({len(text):,} characters; '
    f"the first {limit:,} shown)</span>"
  )


def score_name(scores: scores_lib.ScoreSource) -> str:
  """A heading for a score directory: its stage, score and settings."""
  manifest = scores.manifest
  config = manifest.get("run_config", {})
  if scores.kind in (scores_lib.QUALITY, scores_lib.PERPLEXITY):
    checkpoint = config.get("checkpoint")
    settings = [
      config.get("model")
      or os.path.basename(os.path.normpath(checkpoint or "?"))
    ]
    if manifest.get("random_weights"):
      settings.append("random weights")
    if scores.kind == scores_lib.QUALITY:
      settings.append(f"prompt of at most {config.get('max_length')} tokens")
    else:
      settings.append(f"first {config.get('max_tokens')} tokens")
  elif scores.kind == scores_lib.DENSITY:
    if config.get("estimator") == "sketch":
      settings = [
        f"sketch R={config.get('rows')} x B={config.get('buckets')}",
        "lsh kernel",
      ]
    else:
      settings = ["exact", f"{config.get('kernel')} kernel"]
    if config.get("bandwidth") is not None:
      settings.append(f"bandwidth {config['bandwidth']:.3g}")
  else:  # SemDeDup and prototypes, on one k-means clustering
    kmeans = config.get("kmeans", {})
    metric = "cosine" if kmeans.get("spherical", True) else "euclidean"
    settings = [f"k={kmeans.get('clusters')}", metric]
    if scores.kind == scores_lib.SEMDEDUP:
      settings.append(f"eps {config.get('eps')}")
  embeddings = (manifest.get("embeddings_manifest") or {}).get("run_config")
  if embeddings and embeddings.get("model"):
    settings.append(f"{embeddings['model']} embeddings")
  stage = _STAGE_NAMES.get(scores.kind, scores.kind)
  score = _AXIS_TITLES.get(scores.column, scores.column)
  return f"{stage}: {score} ({', '.join(settings)})"


def _ticks(lo: float, hi: float, min_step: float = 0.0) -> np.ndarray:
  """About five round values (1, 2 or 5 times a power of ten apart) in
  [lo, hi]."""
  raw = max((hi - lo) / 5, min_step, 1e-300)
  power = 10.0 ** np.floor(np.log10(raw))
  step = max(
    power * next(m for m in (1, 2, 5, 10) if m * power >= raw), min_step
  )
  ticks = np.arange(np.ceil(lo / step), np.floor(hi / step) + 1) * step
  return ticks + 0.0  # no "-0"


def _axis_ticks(
  lo: float, hi: float, log: bool, min_step: float = 0.0
) -> list[tuple[float, str]]:
  """(position, label) of round values in [lo, hi]; on a log axis the
  positions are log10 of the values."""
  if not log:
    return [(t, f"{t:.3g}") for t in _ticks(lo, hi, min_step)]
  if hi - lo < 1:  # within a decade: round values, evenly spaced
    values = _ticks(10**lo, 10**hi)
  elif hi - lo < 2.5:
    decades = 10.0 ** np.arange(np.floor(lo), np.ceil(hi) + 1)
    values = (decades[:, None] * np.asarray([1, 2, 5])).ravel()
  else:
    values = 10.0 ** _ticks(lo, hi, min_step=1)  # whole decades
  with np.errstate(divide="ignore"):
    at = np.log10(values)
  inside = (at >= lo - 1e-9) & (at <= hi + 1e-9)
  return [
    (a, f"{v:.3g}") for a, v in zip(at[inside], values[inside], strict=True)
  ]


def _span(values: np.ndarray) -> tuple[float, float]:
  lo, hi = float(values.min()), float(values.max())
  return (lo - 0.5, hi + 0.5) if hi <= lo else (lo, hi)


@dataclasses.dataclass(frozen=True)
class _Frame:
  """Data ranges mapped onto an SVG canvas, drawn with ticks and titles.

  The canvas scales down to the page's width (`viewBox`), never past it.
  """

  x_range: tuple[float, float]
  y_range: tuple[float, float]
  width: int = 640
  height: int = 300
  # Space around the plot area for tick labels and titles, in pixels.
  top, right, bottom, left = 12, 24, 60, 88

  def x(self, v: float) -> float:
    lo, hi = self.x_range
    return self.left + (v - lo) / (hi - lo) * (
      self.width - self.left - self.right
    )

  def y(self, v: float) -> float:
    lo, hi = self.y_range
    return (
      self.height
      - self.bottom
      - (v - lo) / (hi - lo) * (self.height - self.top - self.bottom)
    )

  def svg(
    self, marks: str, x_title: str, y_title: str, *, x_log: bool = False,
    y_log: bool = False, y_step: float = 0.0,
  ) -> str:  # fmt: skip
    """The plot: `marks` (SVG elements in data coordinates) on its axes."""
    x0, y0 = self.x(self.x_range[0]), self.y(self.y_range[0])
    parts = [
      f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{self.x(self.x_range[1]):.1f}" '
      f'y2="{y0:.1f}" stroke="#666"/>'
      f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x0:.1f}" '
      f'y2="{self.y(self.y_range[1]):.1f}" stroke="#666"/>'
    ]
    for t, label in _axis_ticks(*self.x_range, x_log):
      x = self.x(t)
      parts.append(
        f'<line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y0 + 5:.1f}" '
        f'stroke="#666"/><text x="{x:.1f}" y="{y0 + 8:.1f}" '
        f'text-anchor="middle" dominant-baseline="hanging">{label}</text>'
      )
    for t, label in _axis_ticks(*self.y_range, y_log, min_step=y_step):
      y = self.y(t)
      parts.append(
        f'<line x1="{x0 - 5:.1f}" y1="{y:.1f}" x2="{self.width - self.right}" '
        f'y2="{y:.1f}" stroke="#e4e4e4"/><text x="{x0 - 8:.1f}" y="{y:.1f}" '
        f'text-anchor="end" dominant-baseline="middle">{label}</text>'
      )
    log = " (log scale)"
    parts.append(
      f'<text x="{(x0 + self.width - self.right) / 2:.1f}" '
      f'y="{self.height - 6}" text-anchor="middle" font-weight="bold">'
      f"{_e(x_title)}{log if x_log else ''}</text>"
      f'<text transform="translate(4 {(self.top + y0) / 2:.1f}) rotate(-90)" '
      f'text-anchor="middle" dominant-baseline="hanging" font-weight="bold">'
      f"{_e(y_title)}{log if y_log else ''}</text>"
    )
    return (
      f'<svg class="plot" viewBox="0 0 {self.width} {self.height}" '
      f'width="{self.width}" height="{self.height}" font-size="13" '
      f'fill="#333" role="img">{"".join(parts)}{marks}</svg>'
    )


def histogram_svg(
  values: np.ndarray, x_title: str = "score", bins: int = 30,
  log_x: bool = False,
) -> str:  # fmt: skip
  """Inline SVG histogram of the finite `values`, with labelled axes."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if log_x:
    v = np.log10(v[v > 0])
  if not len(v):
    return "<p>(no finite values)</p>"
  counts, edges = np.histogram(v, bins=bins)
  frame = _Frame((edges[0], edges[-1]), (0, max(1, counts.max())))
  rects = []
  for c, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
    x, top = frame.x(a), frame.y(c)
    where = f"{10**a:.3g} to {10**b:.3g}" if log_x else f"{a:.4g} to {b:.4g}"
    rects.append(
      f'<rect x="{x + 0.5:.1f}" y="{top:.1f}" '
      f'width="{max(frame.x(b) - x - 1, 0.5):.1f}" '
      f'height="{frame.y(0) - top:.1f}" fill="{_COLORS[0]}">'
      f"<title>{where}: {c}</title></rect>"
    )
  return frame.svg("".join(rects), x_title, "examples", x_log=log_x, y_step=1)


def _legend(color: Mapping[str, str]) -> str:
  keys = "".join(
    f'<span><i style="background:{c}"></i>{_e(g)}</span>'
    for g, c in color.items()
  )
  return f'<p class="legend">{keys}</p>'


def scatter_svg(
    x: np.ndarray, y: np.ndarray, groups: Sequence[str | None], x_title: str,
    y_title: str, log_x: bool = False, log_y: bool = False,
) -> str:  # fmt: skip
  """Inline SVG scatter plot with labelled axes, coloured by group, and an
  HTML legend."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    x = np.log10(x) if log_x else x
    y = np.log10(y) if log_y else y
  ok = np.isfinite(x) & np.isfinite(y)
  if not ok.any():
    return "<p>(no example has both scores)</p>"
  names = sorted({g or "(none)" for g in groups})
  color = {g: _COLORS[i % len(_COLORS)] for i, g in enumerate(names)}
  frame = _Frame(_span(x[ok]), _span(y[ok]), height=420)
  dots = "".join(
    f'<circle cx="{frame.x(xi):.1f}" cy="{frame.y(yi):.1f}" r="3" '
    f'fill="{color[g or "(none)"]}" fill-opacity="0.7"/>'
    for xi, yi, g, k in zip(x, y, groups, ok, strict=True)
    if k
  )
  plot = frame.svg(dots, x_title, y_title, x_log=log_x, y_log=log_y)
  return plot + _legend(color)


_EXCLUDED = f"(^|,)({'|'.join(records.DEFAULT_EXCLUDED_PROBLEMS)})(,|$)"


def _excluded(problems: pa.Array) -> np.ndarray:
  """[n] bool: rows whose problems (comma-separated, or null) include one
  `select` leaves out by default (unreadable text, a repeated id)."""
  hit = pc.match_substring_regex(problems.cast(pa.string()), _EXCLUDED)
  return pc.fill_null(hit, False).to_numpy(zero_copy_only=False)


def _left_out(report: Report) -> np.ndarray:
  """[n] bool: examples whose record has a problem `select` leaves out."""
  return _excluded(pa.array(report.problems, pa.string()))


def _example(report: Report, i: int) -> str:
  """Where example `i` comes from, and its text (an excerpt if long)."""
  meta = [report.sources[i] or "", _cut(report.ids[i], _ID_CHARS)]
  if report.problems[i]:
    meta.append(f"problem: {_e(report.problems[i])}")
  text = report.texts[i]
  if text.strip():
    body = f"<pre>{_cut(text, _TEXT_CHARS)}</pre>"
  else:
    body = f'<div class="meta">({"whitespace only" if text else "empty"})</div>'
  return f'<div class="meta">{" · ".join(meta)}</div>{body}'


def _examples_table(
  report: Report, column: ScoreColumn, ranked: np.ndarray, per_part: int = 3
) -> str:
  """The highest, middle and lowest of the ranked examples."""
  idx = np.flatnonzero(ranked)
  if not len(idx):
    return "<p>No example has a score to rank.</p>"
  order = idx[np.argsort(-column.values[idx], kind="stable")]
  n, mid = len(order), max(0, len(order) // 2 - per_part // 2)
  parts = {
    "highest": range(min(per_part, n)),
    "middle": range(mid, min(mid + per_part, n)),
    "lowest": range(max(0, n - per_part), n),
  }
  shown, rows = set(), []
  for part, ranks in parts.items():
    ranks = [r for r in ranks if r not in shown]
    shown.update(ranks)
    if ranks:
      rows.append(f'<tr><th colspan="2" class="part">{part}</th></tr>')
    for r in ranks:
      i = order[r]
      rows.append(
        f"<tr><td>{r + 1} of {n}:<br><b>{column.values[i]:.4g}</b></td>"
        f"<td>{_example(report, i)}</td></tr>"
      )
  return (
    '<table class="examples"><colgroup><col class="rank"><col></colgroup>'
    "<tr><th>rank: score</th><th>example</th></tr>"
    f"{''.join(rows)}</table>"
  )


def _unranked_table(
  report: Report, column: ScoreColumn, ranked: np.ndarray, shown: int = 3
) -> str:
  """The examples that do not rank, counted by problem."""
  groups = collections.defaultdict(list)
  for i in np.flatnonzero(~ranked):
    why = "no score" if np.isnan(column.values[i]) else "left out by select"
    groups[report.problems[i] or "(none)", why].append(i)
  if not groups:
    return ""
  rows = []
  for (problem, why), members in sorted(
    groups.items(), key=lambda kv: (-len(kv[1]), kv[0])
  ):
    ids = ", ".join(_cut(report.ids[i], _ID_CHARS) for i in members[:shown])
    more = len(members) - shown
    more = f", … ({more} more)" if more > 0 else ""
    rows.append(
      f"<tr><td>{_e(problem)}</td><td>{why}</td><td>{len(members)}</td>"
      f"<td>{ids}{more}</td></tr>"
    )
  excluded = ", ".join(records.DEFAULT_EXCLUDED_PROBLEMS)
  return (
    f"<h3>Not ranked: {int((~ranked).sum())} examples{_scope(report)}</h3>"
    "<p>Examples without a score (NaN, or no row in the directory), and "
    f"records with a problem <code>select</code> leaves out ({excluded}), "
    "never rank.</p>"
    '<div class="wide"><table class="unranked"><tr><th>problem</th>'
    "<th>why</th><th>examples</th><th>ids</th></tr>"
    f"{''.join(rows)}</table></div>"
  )


def _samplers(kind: str | None) -> str:
  """The samplers that choose by this score alone, and how."""
  uses = [
    f"<code>--sampler {_e(name)}</code>: {_e(description)}"
    for name, (kinds, description) in configs.SAMPLERS.items()
    if kinds == (kind,)
  ]
  return f"<p>{'; '.join(uses)}.</p>" if uses else ""


def _scope(report: Report) -> str:
  """What counts of the page's examples are of."""
  return "" if report.population is None else " of the sample"


def _examples_read(report: Report) -> int:
  """Corpus records read: exact, where the page holds a sample of them."""
  if report.population is None:
    return len(report.ids)
  return report.population.records


def _selected(report: Report, selection: Selection) -> int:
  """Examples a selection keeps: exact (its manifest's), where the page holds
  a sample."""
  if report.population is None:
    return len(selection.ids)
  return selection.manifest.get("num_rows", len(selection.ids))


def _source_table(report: Report) -> str:
  sources = sorted({s or "(none)" for s in report.sources})
  all_src = [s or "(none)" for s in report.sources]
  by_id = dict(zip(report.ids, all_src, strict=True))
  header = "".join(f"<th>{_e(s)}</th>" for s in sources)

  def row(name, members, examples):
    counts = {s: 0 for s in sources}
    for m in members:
      counts[by_id[m]] += 1
    total = max(1, len(members))
    cells = "".join(f"<td>{100 * counts[s] / total:.1f}%</td>" for s in sources)
    return f"<tr><td>{_e(name)}</td><td>{examples}</td>{cells}</tr>"

  rows = [row("whole corpus", report.ids, _examples_read(report))]
  rows += [
    row(sel.name, sel.ids, _selected(report, sel)) for sel in report.selections
  ]
  shares = "" if report.population is None else "<p>Shares of the sample.</p>"
  return (
    f'{shares}<div class="wide"><table><tr><th>set</th><th>examples</th>'
    f"{header}</tr>"
    f"{''.join(rows)}</table></div>"
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
    kept = _selected(report, a) / max(1, _examples_read(report))
    rows.append(
      f"<tr><td>{_e(a.name)}</td><td>{kept:.1%}</td>{''.join(cells)}</tr>"
    )
  return (
    "<p>Kept fraction, and overlap between selections (Jaccard index: "
    f"shared / either{_scope(report)}).</p>"
    f'<div class="wide"><table><tr><th>sampler</th><th>kept</th>{header}</tr>'
    f"{''.join(rows)}</table></div>"
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
    '<div class="wide"><table><tr><th>stage</th><th>rows</th><th>seconds</th>'
    f"<th>docs/s per process</th></tr>{''.join(rows)}</table></div>"
  )


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;
  padding:0 1em;color:#222;overflow-wrap:break-word}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;vertical-align:top;font-size:13px;
  text-align:left}
table.examples{table-layout:fixed;width:100%}col.rank{width:6.5em}
.examples td,.unranked td:last-child{overflow-wrap:anywhere}
th.part{background:#f3f3f3}.wide{overflow-x:auto}
.meta{color:#666;font-size:12px}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0;font-size:12px}
svg.plot{display:block;max-width:100%;height:auto;margin:.5em 0}
@media(max-width:600px){svg.plot{font-size:19px}}
.legend span{display:inline-block;margin-right:1em;font-size:13px}
.legend i{display:inline-block;width:.8em;height:.8em;margin-right:.3em}
.note{background:#fff4d6;border-left:4px solid #e0a800;padding:.5em 1em}
"""


def _stage(column: ScoreColumn) -> str:
  return _STAGE_NAMES.get(column.kind, column.name)


def _log_scale(column: ScoreColumn, ranked: np.ndarray) -> bool:
  values = column.values[ranked]
  return (
    column.column in _LOG_COLUMNS and bool(values.size) and (values > 0).all()
  )


def render(report: Report, manifests: Mapping[str, dict]) -> str:
  """The whole HTML page."""
  n, population = len(report.ids), report.population
  if population is None:
    problems = collections.Counter(
      p for problem in report.problems if problem for p in problem.split(",")
    )
  else:
    problems = population.problems
  marked = ", ".join(f"{_e(p)} {c}" for p, c in sorted(problems.items()))
  body = [f"<h1>{_e(report.title)}</h1>"]
  body += [f'<p class="note">{_e(note)}</p>' for note in report.notes]
  body.append(
    f"<p>{_examples_read(report)} examples"
    f"{f'; records with problems: {marked}' if marked else ''}.</p>"
  )
  if population is not None:
    body.append(
      f"<p>Plots and tables show an id-keyed sample: the {n:,} of the "
      f"{population.records:,} examples whose ids hash smallest (seed "
      f"{population.seed}); counts of examples, problems, ranked rows and "
      "selected rows are exact.</p>"
    )
  left_out = _left_out(report)
  ranked = [np.isfinite(col.values) & ~left_out for col in report.scores]
  for col, ok in zip(report.scores, ranked, strict=True):
    body.append(f"<h2>{_e(col.name)}</h2>{_samplers(col.kind)}")
    if population is None:
      body.append(f"<p>{int(ok.sum())} of {n} examples ranked.</p>")
    else:
      body.append(
        f"<p>{col.ranked_rows} of the directory's {col.rows} rows ranked; "
        f"histogram of a {n:,}-row id-keyed sample of "
        f"{population.records:,} rows, {int(ok.sum())} of them ranked.</p>"
      )
    body.append(
      histogram_svg(
        col.values[ok],
        _AXIS_TITLES.get(col.column, col.column),
        log_x=_log_scale(col, ok),
      )
    )
    body.append(_examples_table(report, col, ok))
    body.append(_unranked_table(report, col, ok))
  if len(report.scores) >= 2:
    (a, b), (ok_a, ok_b) = report.scores[:2], ranked[:2]
    both = ok_a & ok_b
    body.append(f"<h2>{_e(_stage(b))} against {_e(_stage(a))}</h2>")
    body.append(
      f"<p>{int(both.sum())} examples{_scope(report)} ranked by both: "
      f"{_e(b.name)} "
      f"against {_e(a.name)}.</p>"
    )
    body.append(
      scatter_svg(
        np.where(both, a.values, np.nan),
        np.where(both, b.values, np.nan),
        report.sources,
        _AXIS_TITLES.get(a.column, a.column),
        _AXIS_TITLES.get(b.column, b.column),
        log_x=_log_scale(a, both),
        log_y=_log_scale(b, both),
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
    "<meta name='viewport' content='width=device-width, initial-scale=1'>"
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


# Corpus records hashed at a time while sampling.
_BATCH_RECORDS = 65_536


def _sample(
  corpus_records: Iterable[records.Record], size: int, seed: int
) -> tuple[list[records.Record], Population]:
  """The records whose keys (id hash, id, position) are the `size` smallest,
  in corpus order, and exact counts over all of them.

  The hash is `sampling.id_uniforms(id, seed)`, so the sample holds the same
  ids whatever reads them; a repeated id's records join in corpus order, as
  a prefix. At most 2 `size` records and one batch are held at a time.
  """
  # (hash, id, position, record), pruned to the `size` smallest keys.
  kept: list[tuple[float, str, int, records.Record]] = []
  bound, count, problems = np.inf, 0, collections.Counter()
  it = iter(corpus_records)
  while batch := list(itertools.islice(it, _BATCH_RECORDS)):
    hashes = sampling.id_uniforms([r.id for r in batch], seed)
    problems.update(p for r in batch if r.problem for p in r.problem.split(","))
    kept += [
      (hashes[j], batch[j].id, count + j, batch[j])
      for j in np.flatnonzero(hashes <= bound)
    ]
    count += len(batch)
    if len(kept) >= 2 * size:
      kept.sort(key=lambda k: k[:3])
      del kept[size:]
      bound = kept[-1][0]
  kept = sorted(sorted(kept, key=lambda k: k[:3])[:size], key=lambda k: k[2])
  population = Population(count, dict(sorted(problems.items())), seed)
  return [k[3] for k in kept], population


def _members(ids: pa.Array, sample: pa.Array) -> np.ndarray:
  """Indices of the `ids` that are in `sample`."""
  return np.flatnonzero(
    pc.is_in(ids, value_set=sample).to_numpy(zero_copy_only=False)
  )


def _score_column(
  path: str, positions: Mapping[str, list[int]], sample: pa.Array
) -> ScoreColumn:
  """A score directory's scores of the sampled examples, streamed, with its
  exact row and ranked counts."""
  source = scores_lib.open_scores(path)
  values = np.full(sum(map(len, positions.values())), np.nan)
  rows = ranked = 0
  # Stages write rows in corpus order, so the k-th row with an id scores
  # the id's k-th record: a repeated id leaves its first record's score.
  seen = collections.Counter()
  for batch in source.batches():
    ids, problems, scores = batch.columns
    scores = scores.to_numpy(zero_copy_only=False).astype(np.float64)
    rows += len(scores)
    ranked += int((np.isfinite(scores) & ~_excluded(problems)).sum())
    at = _members(ids, sample)
    for i, v in zip(ids.take(at).to_pylist(), scores[at], strict=True):
      if seen[i] < len(positions[i]):
        values[positions[i][seen[i]]] = v
      seen[i] += 1
  return ScoreColumn(
    score_name(source), values, source.manifest, source.column, source.kind,
    rows, ranked,
  )  # fmt: skip


def from_dirs(
  corpus,
  *,
  scores: Sequence[str] = (),
  selections: Sequence[str] = (),
  title: str = "data_efficient report",
  limit: int | None = None,
  notes: Sequence[str] = (),
  sample_rows: int = configs.default(configs.ReportConfig, "sample_rows"),
  seed: int = configs.default(configs.ReportConfig, "seed"),
) -> tuple[Report, dict[str, dict]]:
  """Gathers a report from a corpus and stage output directories.

  Each input is streamed once, holding at most `sample_rows` examples: the
  corpus records of the smallest id hashes (`_sample`), with their rows in
  every directory, so plots and overlaps line up.

  Args:
    corpus: An opened `io.corpus.Corpus` (texts and sources).
    scores: `score`, `perplexity`, `density` and `cluster` output
      directories.
    selections: `select` output directories.
    title: Page title.
    limit: Read only the corpus's first `limit` records (large corpora);
      scores of other ids are left out of the page.
    notes: Remarks shown at the top (e.g. which weights were random).
    sample_rows: Most examples held and shown; counts stay exact.
    seed: Seed of the sample's id hash.

  Returns:
    (report, manifests by name) for `render`.
  """
  chosen_records, population = _sample(
    itertools.islice(corpus.records(), limit), sample_rows, seed
  )
  # id -> its records' positions; a repeated id has several.
  positions = collections.defaultdict(list)
  for n, r in enumerate(chosen_records):
    positions[r.id].append(n)
  sample = pa.array(list(positions), pa.string())
  manifests: dict[str, dict] = {}
  columns = []
  for path in scores:
    column = _score_column(path, positions, sample)
    columns.append(column)
    manifests[f"{column.manifest.get('stage')}: {path}"] = column.manifest
    if column.manifest.get("embeddings_manifest"):
      embeddings = column.manifest["run_config"].get("embeddings")
      manifests[f"embed: {embeddings}"] = column.manifest["embeddings_manifest"]
  chosen = []
  for path in selections:
    manifest = results.read_manifest(path)
    kept = set()
    for batch in results.iter_results(path, ["id"]):
      ids = batch.column(0)
      kept.update(ids.take(_members(ids, sample)).to_pylist())
    # Named by directory: two selections may share a sampler.
    name = os.path.basename(os.path.normpath(path))
    chosen.append(Selection(name, kept, manifest))
    manifests[f"select {manifest.get('sampler')}: {path}"] = manifest
  report = Report(
    title,
    [r.id for r in chosen_records],
    [r.text for r in chosen_records],
    [r.source for r in chosen_records],
    [r.problem for r in chosen_records],
    columns,
    chosen,
    list(notes),
    population if population.records > len(chosen_records) else None,
  )
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
    sample_rows=config.sample_rows,
    seed=config.seed,
  )
  with paths.atomic_write(config.output) as f:
    f.write(render(page, manifests).encode("utf-8"))
  return page
