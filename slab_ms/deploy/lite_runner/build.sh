#!/usr/bin/env bash
# Build the MindSpore Lite C++ runner against a Lite package:
#   MSLITE_HOME=/path/to/mindspore-lite-X-linux-x64/runtime bash slab_ms/deploy/lite_runner/build.sh [OUTPUT]
# MSLITE_HOME holds include/api/*.h and lib/ (the Lite package from the MindSpore site, its runtime/
# folder; or what scripts/get_lite.sh unpacks from PyPI's 2.0.0 wheel). The library is
# libmindspore-lite.so in the site packages and libmindspore-extendrt_python.so in the wheel: the
# first one found is linked. OUTPUT defaults to slab_ms/deploy/lite_runner/lite_runner.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ML="${MSLITE_HOME:?set MSLITE_HOME to the Lite package folder holding include/ and lib/}"
OUT="${1:-$HERE/lite_runner}"
if ! command -v g++ >/dev/null 2>&1; then echo "error: g++ not found (apt-get install g++)" >&2; exit 1; fi
if [ ! -f "$ML/include/api/model.h" ]; then echo "error: $ML/include/api/model.h not found" >&2; exit 1; fi
LIB="$ML/lib"
for name in mindspore-lite mindspore-extendrt_python; do
  if [ -f "$LIB/lib$name.so" ]; then LINK="-l$name"; break; fi
done
if [ -z "${LINK:-}" ]; then echo "error: no libmindspore-lite.so or libmindspore-extendrt_python.so in $LIB" >&2; exit 1; fi
# The runner passes std::string and std::function through Lite's API (the kernel callbacks of --profile): build
# it with the library's C++ string ABI. PyPI's 2.0.0 libraries use the pre-C++11 one (no __cxx11 symbols).
ABI=1
if command -v nm >/dev/null 2>&1 && ! nm -D --defined-only "$LIB/lib${LINK#-l}.so" | grep "_ZN9mindspore" \
    | grep -q "NSt7__cxx11"; then ABI=0; fi
g++ -std=c++17 -O2 -D_GLIBCXX_USE_CXX11_ABI=$ABI -I"$ML" "$HERE/lite_runner.cc" -o "$OUT.tmp.$$" -L"$LIB" $LINK \
  -Wl,--disable-new-dtags -Wl,-rpath,"$LIB"
mv "$OUT.tmp.$$" "$OUT"
echo "$OUT"
