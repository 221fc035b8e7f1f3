# Sourced by the scripts: create or reuse .venv at the repository root and install REQS into it.
# PYTHON selects the interpreter (3.9-3.12); a stamp file skips pip when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 12) else 1)'; then
  echo "error: $PYTHON is $("$PYTHON" -V 2>&1); MindSpore 2.10 needs Python 3.9-3.12 (set PYTHON=...)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $("$PYTHON" -V 2>&1)"
  "$PYTHON" -m venv .venv
fi
export PATH="$ROOT/.venv/bin:$PATH"   # msrun and subprocesses find the venv's python
stamp=".venv/.installed-$(cat $REQS pyproject.toml | sha1sum | cut -c1-12)"
for r in $REQS; do stamp="$stamp-$(basename "$r" .txt)"; done
if [ ! -f "$stamp" ]; then
  extra=""; case "$REQS" in *test*) extra=" and the CPU build of torch";; esac
  echo "== installing $REQS (first run downloads MindSpore$extra)"
  python -m pip install --quiet --upgrade pip
  for r in $REQS; do python -m pip install --quiet -r "$r"; done
  python -m pip install --quiet --no-deps -e .   # slab_ms importable anywhere, slab-train etc. on PATH
  touch "$stamp"
fi
