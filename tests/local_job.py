"""Runs a command as a job of several local processes, as a pod would.

Every process gets `--coordinator_address 127.0.0.1:PORT --num_processes N
--process_id I` after the command's own arguments, and XLA_FLAGS choosing
its emulated CPU device count (2 by default, so a 2-process job has a
4-device global mesh: processes with several devices each, as TPU hosts
are). Used by the multi-process tests of every stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

_PREAMBLE = """
import argparse
_parser = argparse.ArgumentParser()
for _flag in {flags!r}:
  _parser.add_argument(_flag)
_parser.add_argument("--coordinator_address")
_parser.add_argument("--num_processes", type=int)
_parser.add_argument("--process_id", type=int)
a = _parser.parse_args()
"""
_JOIN = """
from data_efficient import sharding
sharding.initialize_distributed(
    a.coordinator_address, a.num_processes, a.process_id)
"""


def job(body: str, *flags: str, join: bool = True) -> str:
  """A program for `python -c` as one process of a `launch`ed job.

  It parses its own `flags` (argparse names: "spec", "--output") and the
  process flags `launch` adds into `a` (all strings but the two counts),
  joins the job unless `join` is False (a stage that joins it itself, from
  `a`), then runs `body`.
  """
  return _PREAMBLE.format(flags=flags) + (_JOIN if join else "") + body


def results(outputs: Sequence[str]) -> list:
  """The JSON after `RESULT ` on the lines of `outputs` that start so (a
  job's way of returning values), in process order."""
  return [
    json.loads(line.split("RESULT ", 1)[1])
    for output in outputs
    for line in output.splitlines()
    if line.startswith("RESULT ")
  ]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(
  argv: Sequence[str],
  processes: int = 2,
  *,
  devices_per_process: int = 2,
  env: dict[str, str] | None = None,
) -> list[subprocess.Popen]:
  """Starts `python argv... --coordinator_address ...` once per process.

  `argv` follows `python` (e.g. ["-m", "data_efficient.cli", "density",
  ...]). Output (stdout and stderr together) is piped; `wait` collects it.
  """
  port = free_port()
  env = dict(
    env or os.environ,
    PYTHONUNBUFFERED="1",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
  )
  return [
    subprocess.Popen(
      [
        sys.executable,
        *argv,
        "--coordinator_address",
        f"127.0.0.1:{port}",
        "--num_processes",
        str(processes),
        "--process_id",
        str(i),
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      env=env,
    )
    for i in range(processes)
  ]


def wait(procs: Sequence[subprocess.Popen], timeout: float = 600) -> list[str]:
  """Waits for every process; returns their outputs.

  The pipes are read at once, one thread each: a process that fills its
  pipe while another is being waited for would otherwise block the job.

  Raises:
    AssertionError: naming the process and showing its output, if one
      failed (the others are killed).
  """
  outputs: list[str | None] = [None] * len(procs)

  def read(i: int) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
      out = procs[i].communicate(timeout=timeout)[0]
      outputs[i] = out.decode(errors="replace")

  threads = [
    threading.Thread(target=read, args=(i,)) for i in range(len(procs))
  ]
  try:
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    for i, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
      assert output is not None, f"process {i} ran past {timeout} s"
      assert proc.returncode == 0, f"process {i} failed:\n{output}"
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return outputs


def run(argv: Sequence[str], processes: int = 2, **kwargs) -> list[str]:
  """`launch` and `wait`."""
  timeout = kwargs.pop("timeout", 600)
  return wait(launch(argv, processes, **kwargs), timeout)
