#!/usr/bin/env bash
# MindSpore Lite's C++ runtime and our runner (slab_ms/deploy/lite_runner), ready to use:
#   bash scripts/get_lite.sh        # prints the runner's path as its last line
# The only Lite on PyPI is 2.0.0, a CPython 3.7 wheel; its Python binding does not load into newer
# Pythons, but its C++ runtime runs from any process that has not loaded MindSpore. This fetches the
# wheel with pip download, checks its sha256, unpacks only the headers and the 11 libraries the
# runtime needs into LITE_CACHE (default ~/.cache/slab_ms/lite-2.0.0), and builds the runner there.
# Idempotent: when the runner is built and newer than its source, it only prints the path.
# Needs g++ and the network to PyPI on the first run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LITE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/slab_ms/lite-2.0.0}"
RUNNER="$CACHE/lite_runner"
WHEEL=mindspore_lite-2.0.0-cp37-cp37m-manylinux1_x86_64.whl
SHA256=199cd0605cc985b88eddb273db9dfe9000a585ba10ca2292b6b36ebfff07b3ec
if [ -x "$RUNNER" ] && [ "$RUNNER" -nt "$ROOT/slab_ms/deploy/lite_runner/lite_runner.cc" ]; then echo "$RUNNER"; exit 0; fi
if [ "$(uname -m)" != "x86_64" ]; then echo "error: PyPI's Lite 2.0.0 wheel is x86_64 only" >&2; exit 1; fi
if ! command -v g++ >/dev/null 2>&1; then echo "error: g++ not found (apt-get install g++)" >&2; exit 1; fi
PY=python3
if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; fi
mkdir -p "$CACHE"
if [ ! -f "$CACHE/mindspore_lite/include/api/model.h" ]; then
  TMP="$(mktemp -d "$CACHE/.fetch-XXXXXX")"
  trap 'rm -rf "$TMP"' EXIT   # the folder made just above, nothing else
  echo "== fetching MindSpore Lite 2.0.0 (168 MB) from PyPI" >&2
  "$PY" -m pip download --quiet --no-deps -d "$TMP" mindspore-lite==2.0.0 --python-version 3.7 \
    --platform manylinux1_x86_64 --only-binary=:all: >&2
  if ! echo "$SHA256  $TMP/$WHEEL" | sha256sum -c --quiet - >&2; then
    echo "error: $WHEEL does not have the expected sha256 $SHA256" >&2; exit 1
  fi
  "$PY" - "$TMP/$WHEEL" "$TMP/unpacked" <<'PY'
import sys
import zipfile
LIBS = ["libmindspore-extendrt_python.so", "libmsplugin-ge-litert_python.so", "libruntime_convert_plugin_python.so",
        "libdnnl.so.2", "libmindspore_converter.so", "libmslite_converter_plugin.so", "libmindspore_core.so",
        "libmindspore_glog.so.0", "libopencv_core.so.4.5", "libopencv_imgcodecs.so.4.5", "libopencv_imgproc.so.4.5"]
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n.startswith("mindspore_lite/include/") and not n.endswith("/")]
    names += [f"mindspore_lite/lib/{lib}" for lib in LIBS]
    for n in names:
        if ".." in n.split("/"):
            raise SystemExit(f"error: unexpected path in the wheel: {n}")
        z.extract(n, sys.argv[2])
PY
  mv "$TMP/unpacked/mindspore_lite" "$CACHE/mindspore_lite"
fi
MSLITE_HOME="$CACHE/mindspore_lite" bash "$ROOT/slab_ms/deploy/lite_runner/build.sh" "$RUNNER" >/dev/null
echo "$RUNNER"
