"""A small real-text corpus of mixed quality, read from an installed package.

The gensim wheel ships real text in its test data. We read it where pip put it
(never copying it into this repository) and label each document's source:

  news       Australian news articles (lee_background.cor)
  wikipedia  English Wikipedia articles, wiki markup stripped (a shortened
             dump)
  usenet     20 Newsgroups posts, headers included (mini_newsgroup: a
             compressed pickle; its strings are read with pickletools,
             nothing is unpickled)
  reviews    one-line movie review snippets (pang_lee_polarity.cor)
  junk       word salad (ldavowpalwabbit.txt) and stemmed, garbled text
             (head500.noblanks.cor)
"""

from __future__ import annotations

import bz2
import json
import os
import pickletools
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator

_MAX_CHARS = 4000  # long articles are cut to their opening


def gensim_test_data() -> str:
  """The folder of gensim's bundled test data.

  Raises:
    FileNotFoundError: if gensim is not installed (`pip install gensim`).
  """
  import importlib.util

  spec = importlib.util.find_spec("gensim")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      "The demo corpus is read from gensim's test data: pip install "
      "'data_efficient[demo]' (or pip install gensim)."
    )
  return os.path.join(spec.submodule_search_locations[0], "test", "test_data")


def _lines(path: str) -> Iterator[str]:
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      if line.strip():
        yield line.strip()


def news(folder: str) -> Iterator[str]:
  yield from _lines(os.path.join(folder, "lee_background.cor"))


_WIKI_PATTERNS = [
  (re.compile(r"<ref[^>]*/>|<ref.*?</ref>", re.S), ""),
  (re.compile(r"<!--.*?-->", re.S), ""),
  (re.compile(r"\{\|.*?\|\}", re.S), ""),  # tables
  (
    re.compile(
      r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]"
    ),
    "",
  ),
  (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]"), r"\1"),  # [[a|b]] -> b
  (re.compile(r"\[https?://\S+ ([^\]]*)\]"), r"\1"),
  (re.compile(r"'{2,}"), ""),
  (re.compile(r"<[^>]+>"), ""),
  (re.compile(r"^=+\s*(.*?)\s*=+$", re.M), r"\1."),
  (re.compile(r"\n{3,}"), "\n\n"),
]


def _strip_templates(text: str) -> str:
  """Removes {{...}} templates, nested ones included."""
  out, depth, i = [], 0, 0
  while i < len(text):
    if text.startswith("{{", i):
      depth, i = depth + 1, i + 2
    elif text.startswith("}}", i) and depth:
      depth, i = depth - 1, i + 2
    else:
      if not depth:
        out.append(text[i])
      i += 1
  return "".join(out)


def clean_wikitext(text: str) -> str:
  """Plain prose from wiki markup (good enough for a demo, not a parser)."""
  text = _strip_templates(text)
  for pattern, repl in _WIKI_PATTERNS:
    text = pattern.sub(repl, text)
  return text.strip()


def wikipedia(folder: str) -> Iterator[str]:
  path = os.path.join(
    folder,
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
  )
  with bz2.open(path) as f:
    for _, element in ET.iterparse(f):
      if element.tag.endswith("}text") and element.text:
        if not element.text.lstrip().lower().startswith("#redirect"):
          text = clean_wikitext(element.text)
          if len(text) > 400:
            yield text[:_MAX_CHARS]
      element.clear()


def usenet(folder: str) -> Iterator[str]:
  """Posts from the compressed pickle, read as opcodes: nothing executes."""
  with open(os.path.join(folder, "mini_newsgroup"), "rb") as f:
    data = zlib.decompress(f.read())
  for opcode, arg, _ in pickletools.genops(data):
    if opcode.name in ("UNICODE", "BINUNICODE") and "\nSubject:" in arg:
      yield arg.strip()[:_MAX_CHARS]


def reviews(folder: str) -> Iterator[str]:
  for line in _lines(os.path.join(folder, "pang_lee_polarity.cor")):
    yield line.split(" ", 1)[1] if line.startswith("__label__") else line


def junk(folder: str) -> Iterator[str]:
  yield from _lines(os.path.join(folder, "ldavowpalwabbit.txt"))
  for line in _lines(os.path.join(folder, "head500.noblanks.cor")):
    yield line[:_MAX_CHARS]


SOURCES = {
  "news": news,
  "wikipedia": wikipedia,
  "usenet": usenet,
  "reviews": reviews,
  "junk": junk,
}


def write_corpus(path: str, per_source: int | None = None) -> dict[str, int]:
  """Writes the mixed corpus as JSONL {id, source, text}; returns counts.

  Args:
    path: Output .jsonl file.
    per_source: Most documents taken from each source (None: all).
  """
  folder = gensim_test_data()
  counts = {}
  with open(path, "w", encoding="utf-8") as f:
    for source, read in SOURCES.items():
      n = 0
      for n, text in enumerate(read(folder), 1):
        record = {"id": f"{source}-{n:05d}", "source": source, "text": text}
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if per_source is not None and n >= per_source:
          break
      counts[source] = n
  return counts
