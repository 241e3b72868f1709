#!/usr/bin/env bash
# The README's test command: installs the package with the reference
# implementations (CPU torch, transformers, sentence-transformers), then runs
# the whole suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
python3 -m pytest -q tests "$@"
