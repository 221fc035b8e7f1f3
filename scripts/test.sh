#!/usr/bin/env bash
# Create or reuse .venv, install runtime and test dependencies, run the test suite.
# Extra arguments go to pytest (e.g. bash scripts/test.sh -k convert).
REQS="requirements.txt requirements-test.txt"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning,ignore::UserWarning}"
exec python -m pytest -q tests "$@"
