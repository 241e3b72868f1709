"""A local Cloud Storage server for gs:// tests (`gcp-storage-emulator`).

The server runs on a daemon thread of the test process, listening on
127.0.0.1 only, in memory, with one bucket. Clients reach it the standard
way: fsspec/gcsfs through `STORAGE_EMULATOR_HOST`; TensorStore's gcs driver,
which does not read that variable, through its own `TENSORSTORE_GCS_HTTP_URL`
(with a fixed test token instead of Google credentials).
"""

from __future__ import annotations

import contextlib
import http
import os
import threading
from collections.abc import Iterator

BUCKET = "bucket"


class Emulator:
  """A running emulator; `failing` makes it answer errors for a while."""

  def __init__(self):
    from gcp_storage_emulator import server

    self._server_module = server
    self._server = server.create_server(
      "127.0.0.1", 0, in_memory=True, default_bucket=BUCKET
    )
    self._server._api.daemon = True  # Never outlives the test session.
    self._server.start()
    port = self._server._api._httpd.server_address[1]
    self.endpoint = f"http://127.0.0.1:{port}"
    self.failures: list[str] = []  # "METHOD path" of each failed request
    self._lock = threading.Lock()
    self._fail = 0
    self._status = http.HTTPStatus.SERVICE_UNAVAILABLE
    self._handle = server.Router.handle
    emulator = self

    def handle(router, method):
      with emulator._lock:
        fail = emulator._fail > 0
        emulator._fail -= fail
      if not fail:
        # A client that read what it needed may close before the answer's
        # end (fsspec's read-ahead): not an error.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
          emulator._handle(router, method)
        return None
      request = router._request_handler
      emulator.failures.append(f"{method} {request.path}")
      request.send_response(emulator._status)
      request.send_header("Content-Length", "0")
      request.end_headers()
      return None

    server.Router.handle = handle

  def environment(self) -> dict[str, str]:
    """Variables that point every client at this server."""
    return {
      "STORAGE_EMULATOR_HOST": self.endpoint,
      # gcsfs probes the bucket type over gRPC (hierarchical namespaces),
      # which the emulator does not serve.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "FSSPEC_GS_TOKEN": "anon",  # No Google credentials here.
      "TENSORSTORE_GCS_HTTP_URL": self.endpoint,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      # Orbax's paths (etils.epath): through fsspec, not tf.io.gfile (which
      # ignores STORAGE_EMULATOR_HOST).
      "EPATH_USE_TF": "false",
    }

  @contextlib.contextmanager
  def failing(
    self, requests: int, status: int = http.HTTPStatus.SERVICE_UNAVAILABLE
  ) -> Iterator[None]:
    """Answers the next `requests` requests with `status` (then normally)."""
    with self._lock:
      self._fail, self._status = requests, http.HTTPStatus(status)
    try:
      yield
    finally:
      with self._lock:
        self._fail = 0

  def stop(self) -> None:
    self._server_module.Router.handle = self._handle
    self._server.stop()


def apply_environment(environment: dict[str, str]) -> None:
  """Sets `environment` here, including what fsspec and etils have already
  read of it (fsspec's config, etils' cached choice of backend)."""
  os.environ.update(environment)
  import fsspec.config
  from etils.epath import gpath

  gpath._is_tf_installed.cache_clear()
  fsspec.config.conf.setdefault("gs", {})["token"] = environment[
    "FSSPEC_GS_TOKEN"
  ]
