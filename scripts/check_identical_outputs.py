"""Proves that two revisions of data_efficient write byte-identical outputs.

Runs one fixed, small pipeline (every stage, every sampler, a resume check)
through `python3 -m data_efficient.cli` once per revision, on the same inputs,
and compares the two output trees file by file:

  python3 scripts/check_identical_outputs.py --base a3eb875
  python3 scripts/check_identical_outputs.py --base HEAD --head HEAD

Each revision is a `git worktree` in a temporary directory (removed at the
end, also on failure); `--head` defaults to the working tree of the repository
this script lives in, and either side may also be an existing directory.
Every command runs with `PYTHONPATH=<tree>` and `cwd=<tree>`, so that tree's
code is imported (checked once per tree) and not the editable install, and
with `JAX_PLATFORMS=cpu`.

The inputs are made once, before either run, by the base tree's own code: the
demo corpus (real text from the gensim wheel) and a SentencePiece vocabulary
trained on its prompts, as `data-efficient demo` makes them. Both runs write
to the same absolute output root, one after the other, and each output tree is
then moved aside, so that the paths recorded in manifests are equal too and
nothing needs rewriting before the comparison.

What counts as identical:

- the same set of relative file paths;
- Parquet and every other non-JSON file: equal bytes (sha256 reported);
- JSON files (manifests, run configs, per-process stats, Orbax metadata) and
  each command's JSON stdout: equal after removing only the keys in
  `VOLATILE_KEYS` (the code version and timings), at any depth, so also in
  input manifests nested in density, cluster and selection manifests;
- Orbax checkpoints (sketch_checkpoints, kmeans_checkpoints): their OCDBT
  data files are named and laid out per write and their metadata carries
  timestamps, so their bytes are not compared; instead every step's arrays
  are restored and compared bit for bit (dtype, shape and sha256 of the
  bytes), and their JSON files as above;
- each sub-command's `--help`: the same flags, choices and required flags
  (the help's prose and order may differ).

The last line is `RESULT identical_files=N different_files=M parquet=P
manifests=Q`; the exit status is 0 only if everything is identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Keys whose values are the code version or timings; removed, at any depth,
# before JSON files are compared. Everything else must be equal.
VOLATILE_KEYS = frozenset(
  {
    "code_version",  # package version + git commit of the tree
    "seconds",  # wall time of a density or cluster run
    "host_seconds",  # per-process stats: tokenization time
    "device_seconds",  # per-process stats: device step time
    "wall_seconds",  # per-process stats: whole loop
    "docs_per_second",  # per-process stats: records / wall_seconds
    # Orbax's _CHECKPOINT_METADATA (inside checkpoints only).
    "init_timestamp_nsecs",
    "commit_timestamp_nsecs",
  }
)
_ORBAX_ONLY_KEYS = frozenset({"init_timestamp_nsecs", "commit_timestamp_nsecs"})
# Files whose presence marks an Orbax step directory and a PyTree item.
_ORBAX_STEP_MARKER = "_CHECKPOINT_METADATA"
_ORBAX_TREE_MARKERS = ("manifest.ocdbt", "_METADATA")
_ORBAX_JSON_FILES = ("_CHECKPOINT_METADATA", "_METADATA", "metadata")

SUBCOMMANDS = (
  "score",
  "perplexity",
  "embed",
  "density",
  "cluster",
  "select",
  "report",
  "convert",
  "demo",
)
MINILM = "all_minilm_l6_v2"

# Writes the inputs with the base tree's code. Module paths are tried in
# order so that a base revision from after a move still works.
_MAKE_INPUTS = r"""
import importlib, json, sys

def first(*names):
  for name in names:
    try:
      return importlib.import_module(name)
    except ModuleNotFoundError:
      pass
  raise SystemExit(f"none of {names} can be imported")

corpus_path, vocab_path, per_source, vocab_size = sys.argv[1:5]
demo_corpus = first("data_efficient.demo_corpus", "data_efficient.demo.corpus")
askllm = first("data_efficient.askllm", "data_efficient.stages.askllm")
corpus_lib = first("data_efficient.io.corpus")
tokenizer = first("data_efficient.models.tokenizer")
counts = demo_corpus.write_corpus(corpus_path, int(per_source))
texts = [
  askllm.build_prompt(r.text)
  for r in corpus_lib.open_corpus(corpus_path, id_field="id").records()
]
tokenizer.train_vocab(texts, vocab_path, vocab_size=int(vocab_size))
print(json.dumps({"documents": counts, "prompts": len(texts)}))
"""

_WHICH_PACKAGE = (
  "import data_efficient, data_efficient.cli as c; "
  "print(data_efficient.__file__); print(c.__file__)"
)


class CheckError(RuntimeError):
  """A step of the check failed; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Tree:
  """One side of the comparison: a source tree and how it was made."""

  label: str  # "base" or "head"
  path: str
  description: str  # commit id, or "working tree of ..."
  worktree: bool  # True if this script created it (and removes it)


@dataclasses.dataclass(frozen=True)
class Result:
  """The comparison of one relative path."""

  path: str
  kind: str  # parquet, manifest, json, checkpoint, stdout, help, file
  identical: bool
  detail: str


# -- git ----------------------------------------------------------------------


def _git(*args: str, cwd: str = REPO) -> str:
  done = subprocess.run(
    ["git", "-C", cwd, *args], capture_output=True, text=True
  )
  if done.returncode:
    raise CheckError(f"git {' '.join(args)}: {done.stderr.strip()}")
  return done.stdout.strip()


def materialise(spec: str | None, label: str, root: str) -> Tree:
  """The tree of `spec`, checked out under `root` if it is a revision.

  Args:
    spec: None (this repository's working tree), an existing directory, or
      a git revision (a new detached worktree).
    label: "base" or "head".
    root: The temporary directory that holds new worktrees.
  """
  if spec is None:
    top = _git("rev-parse", "--show-toplevel")
    return Tree(label, top, f"working tree of {top}", worktree=False)
  if os.path.isdir(spec):
    path = os.path.abspath(spec)
    return Tree(label, path, f"directory {path}", worktree=False)
  commit = _git("rev-parse", "--verify", f"{spec}^{{commit}}")
  path = os.path.join(root, f"tree-{label}")
  _git("worktree", "add", "--detach", "--quiet", path, commit)
  return Tree(label, path, f"{spec} = {commit}", worktree=True)


def remove_worktree(tree: Tree) -> None:
  if not tree.worktree or not os.path.exists(tree.path):
    return
  try:
    _git("worktree", "remove", "--force", tree.path)
  except CheckError as e:
    print(f"warning: {e}; removing {tree.path} by hand", file=sys.stderr)
    shutil.rmtree(tree.path, ignore_errors=True)
    subprocess.run(["git", "-C", REPO, "worktree", "prune"], check=False)


# -- running the package ------------------------------------------------------


def _env(tree: Tree) -> dict[str, str]:
  env = dict(os.environ)
  env.update(
    PYTHONPATH=tree.path,
    JAX_PLATFORMS="cpu",
    PYTHONDONTWRITEBYTECODE="1",  # leave the trees as they were
    COLUMNS="80",  # argparse wraps --help to the terminal width
    TF_CPP_MIN_LOG_LEVEL="2",
  )
  return env


def _shown(args: Sequence[str]) -> str:
  """The command line, with inline `-c` programs elided."""
  return " ".join("'...'" if "\n" in a else a for a in args)


def _tail(text: str, lines: int = 40) -> str:
  return "\n".join(text.rstrip().splitlines()[-lines:])


def python(
  tree: Tree,
  args: Sequence[str],
  *,
  name: str,
  logs: str,
  timeout: float,
  expect_ok: bool = True,
) -> subprocess.CompletedProcess:
  """Runs `python3 ARGS` in `tree`; keeps its stdout and stderr in `logs`."""
  start = time.perf_counter()
  try:
    done = subprocess.run(
      [sys.executable, *args],
      cwd=tree.path,
      env=_env(tree),
      capture_output=True,
      text=True,
      timeout=timeout,
    )
  except subprocess.TimeoutExpired as e:
    raise CheckError(
      f"[{tree.label}] {name}: timed out after {timeout} s"
    ) from e
  os.makedirs(logs, exist_ok=True)
  for stream in ("stdout", "stderr"):
    with open(os.path.join(logs, f"{name}.{stream}"), "w") as f:
      f.write(getattr(done, stream))
  seconds = time.perf_counter() - start
  print(
    f"  [{tree.label}] {name}: exit {done.returncode} ({seconds:.1f} s)",
    flush=True,
  )
  if expect_ok and done.returncode:
    raise CheckError(
      f"[{tree.label}] {name} failed with exit {done.returncode}:\n"
      f"  command: python3 {_shown(args)}\n  stderr tail:\n"
      + _tail(done.stderr)
    )
  return done


def check_imports(tree: Tree, logs: str) -> None:
  """Fails unless `tree`'s own data_efficient (and cli) is imported."""
  done = python(
    tree, ["-c", _WHICH_PACKAGE], name="which", logs=logs, timeout=300
  )
  files = done.stdout.split()
  print(f"  [{tree.label}] data_efficient.__file__ = {files[0]}")
  root = os.path.realpath(tree.path) + os.sep
  for file in files:
    if not os.path.realpath(file).startswith(root):
      raise CheckError(
        f"[{tree.label}] imported {file}, not the code of {tree.path}; "
        "check PYTHONPATH and the editable install."
      )


def make_inputs(
  base: Tree, inputs: str, per_source: int, vocab_size: int, logs: str
) -> tuple[str, str]:
  """Writes the shared corpus and vocabulary with the base tree's code."""
  os.makedirs(inputs)
  corpus = os.path.join(inputs, "corpus.jsonl")
  vocab = os.path.join(inputs, "vocab.model")
  done = python(
    base,
    ["-c", _MAKE_INPUTS, corpus, vocab, str(per_source), str(vocab_size)],
    name="make_inputs",
    logs=logs,
    timeout=900,
  )
  print(f"  inputs: {done.stdout.strip()}")
  for path in (corpus, vocab):
    print(f"  input {os.path.basename(path)} sha256={_sha256(path)}")
  return corpus, vocab


def pipeline(corpus: str, vocab: str, out: str) -> list[tuple[str, list[str]]]:
  """(name, cli arguments) of every stage, in order, writing under `out`."""
  o = lambda *parts: os.path.join(out, *parts)  # noqa: E731
  corpus_flags = ["--input", corpus, "--id_field", "id", "--source_field",
                  "source", "--on_error", "mark", "--chunk_size", "64",
                  "--no_progress"]  # fmt: skip
  tiny = ["--model", "tiny", "--vocab", vocab, *corpus_flags]
  minilm = ["--model", MINILM, *corpus_flags]
  emb = ["--embeddings", o("embeddings"), "--no_progress"]
  exact = ["--estimator", "exact", "--kernel", "gaussian",
           "--median_kernel_value", "0.01"]  # fmt: skip
  sketch = o("scores", "density_sketch")
  exact_dir = o("scores", "density_exact")
  steps = [
    ("score", ["score", *tiny, "--output", o("scores", "askllm")]),
    ("perplexity", ["perplexity", *tiny, "--output", o("scores", "ppl")]),
    ("embed", ["embed", *minilm, "--output", o("embeddings")]),
    ("density_sketch", ["density", *emb, "--output", sketch]),
    ("density_exact", ["density", *emb, *exact, "--output", exact_dir]),
  ]
  for method in ("semdedup", "prototypes"):
    flags = ["--method", method, "--clusters", "8", *emb]
    args = ["cluster", *flags, "--output", o("scores", method)]
    steps.append((f"cluster_{method}", args))
  askllm = o("scores", "askllm")
  selections = {  # output name: (sampler, score directories)
    "askllm-topk": ("askllm-topk", [askllm]),
    "density-ips": ("density-ips", [askllm, exact_dir]),
    "density-ips-sketch": ("density-ips", [askllm, sketch]),
    "density-topk": ("density-topk", [askllm, exact_dir]),
    "density-bottomk": ("density-bottomk", [askllm, exact_dir]),
    "random": ("random", [askllm]),
    "askllm-then-ips": ("askllm-then-ips", [askllm, exact_dir]),
    "semdedup": ("semdedup", [o("scores", "semdedup")]),
    "prototypes": ("prototypes", [o("scores", "prototypes")]),
    "perplexity": ("perplexity", [o("scores", "ppl")]),
  }
  for name, (sampler, scores) in selections.items():
    flags = ["--sampler", sampler, "--rate", "0.2", "--seed", "0"]
    flags += [x for s in scores for x in ("--scores", s)]
    steps.append(
      (f"select_{name}", ["select", *flags, "--output", o("selection", name)])
    )
  return steps


def samplers_of(steps: Sequence[tuple[str, list[str]]]) -> set[str]:
  return {a[a.index("--sampler") + 1] for _, a in steps if a[0] == "select"}


def cli_samplers(help_text: str) -> set[str]:
  """The --sampler choices in `select --help`."""
  match = re.search(r"--sampler \{([^}]*)\}", help_text)
  if not match:
    raise CheckError("select --help shows no --sampler {...} choices.")
  return set(match.group(1).split(","))


def run_tree(
  tree: Tree, corpus: str, vocab: str, out: str, logs: str, timeout: float
) -> None:
  """Runs the pipeline and the resume checks of one tree into `out`."""
  print(f"\n== {tree.label}: {tree.description}", flush=True)
  check_imports(tree, logs)
  cli = ["-m", "data_efficient.cli"]
  for sub in SUBCOMMANDS:
    args = [*cli, sub, "--help"]
    python(tree, args, name=f"help_{sub}", logs=logs, timeout=300)
  with open(os.path.join(logs, "help_select.stdout")) as f:
    offered = cli_samplers(f.read())
  steps = pipeline(corpus, vocab, out)
  if missing := offered - samplers_of(steps):
    raise CheckError(
      f"[{tree.label}] select offers samplers this check does not run: "
      f"{sorted(missing)}; add them to pipeline()."
    )
  for i, (name, args) in enumerate(steps):
    name = f"{i:02d}_{name}"
    python(tree, [*cli, *args], name=name, logs=logs, timeout=timeout)
  resume_check(tree, [*cli, *steps[0][1]], logs, timeout)


def resume_check(
  tree: Tree, command: list[str], logs: str, timeout: float
) -> None:
  """A finished command's rerun is a no-op; with another flag, refused."""
  output = command[command.index("--output") + 1]
  before = _dir_digest(output)
  done = python(tree, command, name="resume_same", logs=logs, timeout=timeout)
  if "already complete" not in done.stderr:
    raise CheckError(
      f"[{tree.label}] rerunning the finished score command did not say "
      f"'already complete'; stderr tail:\n{_tail(done.stderr)}"
    )
  done = python(
    tree,
    [*command, "--max_length", "256"],
    name="resume_other_flag",
    logs=logs,
    timeout=timeout,
    expect_ok=False,
  )
  if done.returncode == 0 or "max_length" not in done.stderr:
    raise CheckError(
      f"[{tree.label}] rerunning score with --max_length 256 into a "
      f"finished directory gave exit {done.returncode} and did not name "
      f"max_length; stderr tail:\n{_tail(done.stderr)}"
    )
  last = done.stderr.strip().splitlines()[-1]
  print(f"  [{tree.label}] refused as expected: {last[:160]}")
  if _dir_digest(output) != before:
    raise CheckError(f"[{tree.label}] a rerun changed the files in {output}.")
  print(f"  [{tree.label}] resume check passed; {output} unchanged")


# -- comparing ----------------------------------------------------------------


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _files(root: str) -> Iterator[str]:
  for folder, dirs, names in os.walk(root):
    dirs.sort()
    for name in sorted(names):
      yield os.path.relpath(os.path.join(folder, name), root)


def _dir_digest(root: str) -> dict[str, str]:
  return {rel: _sha256(os.path.join(root, rel)) for rel in _files(root)}


def strip_volatile(
  obj: Any, keys: frozenset[str]
) -> tuple[Any, dict[str, Any]]:
  """`obj` without the `keys`, at any depth, and the removed values by path."""
  removed: dict[str, Any] = {}

  def walk(x: Any, path: str) -> Any:
    if isinstance(x, dict):
      out = {}
      for k, v in x.items():
        sub = f"{path}.{k}" if path else str(k)
        if k in keys:
          removed[sub] = v
        else:
          out[k] = walk(v, sub)
      return out
    if isinstance(x, list):
      return [walk(v, f"{path}[{i}]") for i, v in enumerate(x)]
    return x

  return walk(obj, ""), removed


def _json_differences(a: Any, b: Any, path: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b), key=str):
      sub = f"{path}.{k}" if path else str(k)
      if k not in a or k not in b:
        out.append(f"{sub} only in {'head' if k in b else 'base'}")
      else:
        out.extend(_json_differences(a[k], b[k], sub))
    return out
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    out = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
      out.extend(_json_differences(x, y, f"{path}[{i}]"))
    return out
  if a != b or type(a) is not type(b):
    return [f"{path or '<root>'}: {_short(a)} != {_short(b)}"]
  return []


def _short(x: Any) -> str:
  text = json.dumps(x, sort_keys=True)
  return text if len(text) <= 80 else text[:77] + "..."


def _load_json(path: str) -> tuple[bool, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      return True, json.load(f)
  except (ValueError, UnicodeDecodeError):
    return False, None


def compare_json(a: str, b: str, keys: frozenset[str]) -> tuple[bool, str]:
  """Compares two JSON files without `keys` (identical, why)."""
  ok_a, doc_a = _load_json(a)
  ok_b, doc_b = _load_json(b)
  if not (ok_a and ok_b):
    return False, "not valid JSON in " + ("head" if ok_a else "base")
  doc_a, removed_a = strip_volatile(doc_a, keys)
  doc_b, removed_b = strip_volatile(doc_b, keys)
  if set(removed_a) != set(removed_b):
    only = sorted(set(removed_a) ^ set(removed_b))
    return False, f"volatile keys at other places: {only[:5]}"
  if diffs := _json_differences(doc_a, doc_b):
    more = f" (+{len(diffs) - 5} more)" if len(diffs) > 5 else ""
    return False, "; ".join(diffs[:5]) + more
  if not removed_a:
    return True, "equal JSON"
  names = sorted({p.rsplit(".", 1)[-1] for p in removed_a})
  differing = sum(removed_a[p] != removed_b[p] for p in removed_a)
  return True, (
    f"equal JSON without {len(removed_a)} volatile values, {differing} of "
    f"them differing ({', '.join(names)})"
  )


def _orbax_arrays(item_dir: str) -> dict[str, str]:
  """keypath -> 'dtype [shape] sha256' of each array of an Orbax PyTree item."""
  import warnings

  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  with warnings.catch_warnings():
    # "Sharding info not provided": restored as stored, on the CPU.
    warnings.simplefilter("ignore", UserWarning)
    with ocp.PyTreeCheckpointer() as ckpt:
      tree = ckpt.restore(item_dir)
  out = {}
  for keypath, leaf in jax.tree_util.tree_leaves_with_path(tree):
    array = np.ascontiguousarray(np.asarray(leaf))
    digest = hashlib.sha256(array.tobytes()).hexdigest()
    out[jax.tree_util.keystr(keypath)] = (
      f"{array.dtype} {list(array.shape)} {digest}"
    )
  return out


def _orbax_items(root: str) -> list[str]:
  """Relative paths of the Orbax PyTree items (array folders) under root."""
  items = []
  for folder, dirs, names in os.walk(root):
    dirs.sort()
    step = os.path.dirname(folder)
    if any(m in names for m in _ORBAX_TREE_MARKERS) and os.path.exists(
      os.path.join(step, _ORBAX_STEP_MARKER)
    ):
      items.append(os.path.relpath(folder, root))
  return items


def _ocdbt_store(rel: str, items: Sequence[str]) -> bool:
  """Whether `rel` is an OCDBT store file of one of the PyTree `items`.

  Those are named and laid out per write, so their arrays are compared.
  """
  for item in items:
    if rel.startswith(item + os.sep):
      inner = os.path.relpath(rel, item).split(os.sep)
      return inner[0] in ("d", "manifest.ocdbt") or inner[0].startswith(
        "ocdbt.process_"
      )
  return False


def compare_trees(
  base: str, head: str
) -> tuple[list[Result], dict[str, list[str]]]:
  """Compares the output trees `base` and `head` file by file.

  Returns:
    (one result per compared path, the OCDBT store files of each side that
    were compared through their checkpoints' arrays rather than bytes).
  """
  results: list[Result] = []
  items = sorted(set(_orbax_items(base)) | set(_orbax_items(head)))
  for item in items:
    a, b = os.path.join(base, item), os.path.join(head, item)
    if not (os.path.isdir(a) and os.path.isdir(b)):
      side = "head" if os.path.isdir(b) else "base"
      results.append(Result(item + "/", "checkpoint", False, f"only in {side}"))
      continue
    arrays_a, arrays_b = _orbax_arrays(a), _orbax_arrays(b)
    if arrays_a == arrays_b:
      detail = "arrays " + "; ".join(f"{k} {v}" for k, v in arrays_a.items())
      results.append(Result(item + "/", "checkpoint", True, detail))
    else:
      diffs = [
        k
        for k in sorted(set(arrays_a) | set(arrays_b))
        if arrays_a.get(k) != arrays_b.get(k)
      ]
      results.append(
        Result(item + "/", "checkpoint", False, f"arrays differ: {diffs}")
      )

  store: dict[str, set[str]] = {"base": set(), "head": set()}
  files: dict[str, set[str]] = {"base": set(), "head": set()}
  for side, root in (("base", base), ("head", head)):
    for rel in _files(root):
      (store[side] if _ocdbt_store(rel, items) else files[side]).add(rel)
  for rel in sorted(files["base"] | files["head"]):
    kind = _kind(rel)
    if rel not in files["base"] or rel not in files["head"]:
      side = "head" if rel in files["head"] else "base"
      results.append(Result(rel, kind, False, f"only in {side}"))
      continue
    a, b = os.path.join(base, rel), os.path.join(head, rel)
    sha_a, sha_b = _sha256(a), _sha256(b)
    if kind == "help":
      same, why = compare_help(a, b)
      results.append(Result(rel, kind, same, why))
    elif kind in ("manifest", "json", "stdout"):
      keys = VOLATILE_KEYS
      if not _in_checkpoint(rel):
        keys = VOLATILE_KEYS - _ORBAX_ONLY_KEYS
      if sha_a == sha_b:
        results.append(Result(rel, kind, True, "equal bytes"))
      elif kind == "stdout" and not _load_json(a)[0]:
        results.append(Result(rel, kind, False, "text differs"))
      else:
        same, why = compare_json(a, b, keys)
        results.append(Result(rel, kind, same, why))
    elif sha_a == sha_b:
      results.append(Result(rel, kind, True, f"sha256={sha_a}"))
    else:
      results.append(
        Result(rel, kind, False, f"bytes differ: sha256 {sha_a} != {sha_b}")
      )
  return results, {k: sorted(v) for k, v in store.items()}


def help_flags(text: str) -> tuple[set[str], set[str]]:
  """(every flag with its choices, the required flags) of a `--help` text.

  The help's wording and order may change; the flags a user types may not.
  """
  flags = {
    re.sub(r"\{([^}]*)\}", lambda m: str(sorted(m[1].split(","))), flag)
    for flag in re.findall(r"--[a-z_]+(?: \{[^}]*\})?", text)
  }
  usage = text.split("\n\n", 1)[0]
  while re.search(r"\[[^\[\]]*\]", usage):
    usage = re.sub(r"\[[^\[\]]*\]", "", usage)
  return flags, set(re.findall(r"--[a-z_]+", usage))


def compare_help(a: str, b: str) -> tuple[bool, str]:
  """Whether two `--help` texts offer the same flags, choices and required
  flags (their prose may differ)."""
  with open(a) as fa, open(b) as fb:
    (flags_a, req_a), (flags_b, req_b) = (
      help_flags(fa.read()),
      help_flags(fb.read()),
    )
  if flags_a == flags_b and req_a == req_b:
    return True, f"same {len(flags_a)} flags, {len(req_a)} required"
  return False, (
    f"flags only in base: {sorted(flags_a - flags_b)}, only in head: "
    f"{sorted(flags_b - flags_a)}; required {sorted(req_a)} vs {sorted(req_b)}"
  )


def _in_checkpoint(rel: str) -> bool:
  return "_checkpoints" + os.sep in rel


def _kind(rel: str) -> str:
  name = os.path.basename(rel)
  if rel.startswith("stdout" + os.sep):
    return "help" if name.startswith("help_") else "stdout"
  if name.endswith(".parquet"):
    return "parquet"
  if name == "manifest.json":
    return "manifest"
  # Orbax's JSON files: step and tree metadata, JSON items ("metadata").
  if name.endswith(".json") or name in _ORBAX_JSON_FILES:
    return "json"
  return "file"


def collect_stdout(logs: str, dest: str) -> None:
  """Copies each command's stdout (not the import check) into `dest`."""
  os.makedirs(dest)
  for name in sorted(os.listdir(logs)):
    if name.endswith(".stdout") and not name.startswith("which"):
      shutil.copy(os.path.join(logs, name), os.path.join(dest, name))


def report(results: Sequence[Result], store: dict[str, list[str]]) -> int:
  """Prints every result and the RESULT line; returns the exit status."""
  print("\n== comparison (base vs head)")
  width = max(len(r.path) for r in results)
  for r in results:
    status = "identical" if r.identical else "DIFFERENT"
    print(f"{status:9}  {r.kind:10} {r.path:{width}}  {r.detail}")
  if store["base"] or store["head"]:
    print(
      "\nNot byte-compared: OCDBT store files inside the checkpoints' array "
      "folders (their names are random per write and their bytes depend on "
      "the write), compared above as restored arrays instead:"
    )
    for side in ("base", "head"):
      print(f"  {side}: {len(store[side])} files")
      for rel in store[side]:
        print(f"    {rel}")
  same = sum(r.identical for r in results)
  diff = len(results) - same
  kinds: dict[str, int] = {}
  for r in results:
    kinds[r.kind] = kinds.get(r.kind, 0) + 1
  counts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
  print(f"\n{len(results)} paths compared: {counts}")
  print(
    f"RESULT identical_files={same} different_files={diff} "
    f"parquet={kinds.get('parquet', 0)} manifests={kinds.get('manifest', 0)}"
  )
  return 0 if diff == 0 and same > 0 else 1


# -- main ---------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--base", required=True, help="git revision or directory")
  p.add_argument(
    "--head",
    default=None,
    help="git revision or directory (default: this repository's working "
    "tree, uncommitted changes included)",
  )
  p.add_argument(
    "--per_source",
    type=int,
    default=40,
    help="demo corpus documents per source (5 sources)",
  )
  p.add_argument("--vocab_size", type=int, default=1000)
  p.add_argument(
    "--timeout", type=float, default=1800, help="seconds per command"
  )
  p.add_argument(
    "--keep", action="store_true", help="keep the temporary directory"
  )
  return p.parse_args(argv)


def _on_sigterm(signum, frame):
  del frame
  raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  signal.signal(signal.SIGTERM, _on_sigterm)  # so that `finally` cleans up
  os.environ["JAX_PLATFORMS"] = "cpu"  # for reading checkpoints here
  start = time.perf_counter()
  tmp = tempfile.mkdtemp(prefix="check_identical_")
  trees: list[Tree] = []
  try:
    kept = " (kept: --keep)" if args.keep else ""
    print(f"temporary directory: {tmp}{kept}")
    for label, spec in (("base", args.base), ("head", args.head)):
      trees.append(materialise(spec, label, tmp))
      print(f"{label}: {trees[-1].description} at {trees[-1].path}")
    base, head = trees
    corpus, vocab = make_inputs(
      base,
      os.path.join(tmp, "inputs"),
      args.per_source,
      args.vocab_size,
      os.path.join(tmp, "logs-inputs"),
    )
    # One absolute output root for both runs (moved aside after each), so
    # the paths the manifests record are the same.
    out = os.path.join(tmp, "out")
    for tree in trees:
      logs = os.path.join(tmp, f"logs-{tree.label}")
      run_tree(tree, corpus, vocab, out, logs, args.timeout)
      collect_stdout(logs, os.path.join(out, "stdout"))
      os.rename(out, os.path.join(tmp, f"out-{tree.label}"))
    results, store = compare_trees(
      os.path.join(tmp, "out-base"), os.path.join(tmp, "out-head")
    )
    print(f"\nran in {time.perf_counter() - start:.0f} s")
    return report(results, store)
  except CheckError as e:
    print(f"\nerror: {e}", file=sys.stderr)
    print("RESULT failed (see the error above)")
    return 1
  finally:
    for tree in trees:
      remove_worktree(tree)
    if not args.keep:
      shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
