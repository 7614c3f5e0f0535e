#!/usr/bin/env bash
# Build llama.cpp's own benchmark/quantize tools (llama-batched-bench, llama-bench,
# llama-quantize) from the llama.cpp sources vendored in the llama-cpp-python sdist,
# so the tools match the library used for the conformance reference.
#
#   tests/peer/build_llamacpp_tools.sh DEST_DIR [SDIST.tar.gz | SOURCE_DIR]
#
# DEST_DIR receives the binaries (keep it outside the repository).  Without a second
# argument the sdist of llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (default 0.3.36) is
# fetched from PyPI with pip.  Idempotent: skips the build when the binaries exist.
# Needs a C++ compiler and cmake (pip install cmake ninja).  ~6 minutes on 2 cores.
set -euo pipefail

DEST="${1:?usage: $0 DEST_DIR [SDIST.tar.gz|SOURCE_DIR]}"
SRC_ARG="${2:-}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc)}"
TARGETS=(llama-batched-bench llama-bench llama-quantize)

mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"

all_built=1
for t in "${TARGETS[@]}"; do [ -x "$DEST/$t" ] || all_built=0; done
if [ "$all_built" = 1 ]; then
    echo "tools already built in $DEST"; exit 0
fi

WORK="$DEST/.work"
mkdir -p "$WORK"

if [ -z "$SRC_ARG" ]; then
    SDIST="$(ls "$WORK"/llama_cpp_python-"$VERSION".tar.gz 2>/dev/null || true)"
    if [ -z "$SDIST" ]; then
        "$PYTHON" -m pip install --upgrade cmake ninja scikit-build-core >/dev/null
        # --no-build-isolation: do not build the backend's own deps from source just to
        # read the sdist's metadata.
        "$PYTHON" -m pip download --no-deps --no-binary :all: --no-build-isolation \
            "llama-cpp-python==$VERSION" -d "$WORK"
        SDIST="$WORK/llama_cpp_python-$VERSION.tar.gz"
    fi
    SRC_ARG="$SDIST"
fi

if [ -d "$SRC_ARG" ]; then
    SRC="$SRC_ARG"
else
    tar -xzf "$SRC_ARG" -C "$WORK"
    SRC="$(ls -d "$WORK"/llama_cpp_python-*/ | head -n1)"
fi
if [ -d "$SRC/vendor/llama.cpp" ]; then SRC="$SRC/vendor/llama.cpp"; fi
[ -f "$SRC/CMakeLists.txt" ] || { echo "no llama.cpp sources in $SRC" >&2; exit 1; }

GEN=()
if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi

cmake -S "$SRC" -B "$WORK/build" "${GEN[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF \
    -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=OFF
cmake --build "$WORK/build" -j "$JOBS" --target "${TARGETS[@]}"

for t in "${TARGETS[@]}"; do
    cp "$WORK/build/bin/$t" "$DEST/$t"
done
echo "built: $(cd "$DEST" && ls "${TARGETS[@]}") in $DEST"
"$DEST/llama-bench" --version 2>&1 | head -n 3 || true
