"""The offline demo end to end, and its real-text corpus."""

import json
import os
import pickle

import pytest

from data_efficient import cli, demo
from data_efficient.demo import corpus as demo_corpus
from data_efficient.io import results
from data_efficient.stages import configs


def test_corpus_has_every_source_and_never_unpickles(tmp_path, monkeypatch):
  pytest.importorskip("gensim")

  def refuse(*args, **kwargs):
    raise AssertionError("the demo corpus must not unpickle anything")

  monkeypatch.setattr(pickle, "loads", refuse)
  monkeypatch.setattr(pickle, "load", refuse)
  counts = demo_corpus.write_corpus(str(tmp_path / "c.jsonl"), per_source=5)
  assert counts == dict.fromkeys(demo_corpus.SOURCES, 5)
  rows = [json.loads(line) for line in open(tmp_path / "c.jsonl")]
  assert len({r["id"] for r in rows}) == 25
  usenet = [r["text"] for r in rows if r["source"] == "usenet"]
  assert all("Subject:" in t for t in usenet)
  wiki = [r["text"] for r in rows if r["source"] == "wikipedia"]
  assert not any("{{" in t or "[[" in t for t in wiki)


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(tmp_path, capsys):
  pytest.importorskip("gensim")
  out = str(tmp_path / "demo")
  summary = demo.run(
    configs.DemoConfig(output=out, per_source=12, progress=False)
  )
  for stage in ("scores/askllm", "embeddings", "scores/density"):
    assert results.read_manifest(os.path.join(out, stage))["num_rows"] == 60
  for sampler in demo.SAMPLERS:
    manifest = results.read_manifest(os.path.join(out, "selection", sampler))
    assert manifest["counts"]["num_selected"] == 12
  html = open(summary["report"]).read()
  assert "RANDOM" in html and "<svg" in html
  assert set(summary["source_shares"]["corpus"]) == set(demo_corpus.SOURCES)
  assert "random" in summary["notes"][0].lower()
  # Rerunning finds every stage complete and gives the same selections.
  before = {
    s: results.read_results(os.path.join(out, "selection", s)).to_pylist()
    for s in demo.SAMPLERS
  }
  # ... through the CLI, which prints the shares table and the report.
  assert cli.main(["demo", "--output", out, "--per_source", "12",
                   "--no_progress"]) == 0  # fmt: skip
  printed = capsys.readouterr().out
  names = ["corpus", *demo.SAMPLERS, "density-ips-sketch"]
  header, *rows = printed.splitlines()[1 : 2 + len(names)]
  assert header.split() == [*summary["source_shares"]["corpus"], "from", "even"]
  assert [row.split()[0] for row in rows] == names
  assert f"report: {summary['report']}" in printed
  with open(os.path.join(out, demo.SUMMARY_FILE)) as f:
    assert json.load(f) == summary
  for s in demo.SAMPLERS:
    after = results.read_results(os.path.join(out, "selection", s)).to_pylist()
    assert after == before[s]
