"""The README's "From Python" snippet runs as written."""

import json
import pathlib
import re
import shutil

import pytest
from text_fixtures import synthetic_texts

from data_efficient.io import results

README = pathlib.Path(__file__).parent.parent / "README.md"


def _python_snippet(section: str) -> str:
  """The first ```python block after the heading `section`."""
  text = README.read_text()
  start = text.index(f"\n## {section}\n")
  return re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)[1]


@pytest.mark.slow
def test_the_from_python_snippet_runs(tmp_path, monkeypatch, vocab_path):
  with open(tmp_path / "corpus.jsonl", "w") as f:
    for i, text in enumerate(synthetic_texts(40, seed=3)):
      f.write(json.dumps({"id": f"doc-{i}", "text": text}) + "\n")
  shutil.copy(vocab_path, tmp_path / "vocab.model")
  monkeypatch.chdir(tmp_path)
  exec(_python_snippet("From Python"), {})  # noqa: S102 (our own README)
  manifest = results.read_manifest("runs/py/selection")
  assert manifest["counts"]["num_selected"] == 8
