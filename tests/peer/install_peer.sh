#!/usr/bin/env bash
# Install the llama.cpp comparison peer (llama-cpp-python, which compiles llama.cpp
# from its sdist) for the conformance reference and throughput comparison.
# Idempotent: does nothing when the pinned version already imports.
# Only apt (compiler) and pip (PyPI) are used.
#
#   tests/peer/install_peer.sh            # default: llama-cpp-python 0.3.36
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 PYTHON=python3 tests/peer/install_peer.sh
#
# The build takes ~5 minutes on 2 cores.  CMAKE_ARGS defaults to a native CPU build
# (-DGGML_NATIVE=ON) without libcurl.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PYTHON="${PYTHON:-python3}"
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAMA_CURL=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

if "$PYTHON" -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.__version__ == '$VERSION' else 1)" 2>/dev/null; then
    echo "llama-cpp-python $VERSION already installed"
    exit 0
fi

# A C/C++ toolchain is needed to compile llama.cpp.
if ! command -v g++ >/dev/null 2>&1 || ! command -v gcc >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends build-essential
fi

"$PYTHON" -m pip install --upgrade "cmake>=3.21" ninja "scikit-build-core>=0.9.2" numpy jinja2 diskcache typing-extensions

# Try the normal isolated build first; fall back to building with the packages above.
if ! "$PYTHON" -m pip install --no-cache-dir "llama-cpp-python==$VERSION"; then
    echo "isolated build failed; retrying with --no-build-isolation" >&2
    "$PYTHON" -m pip install --no-cache-dir --no-build-isolation "llama-cpp-python==$VERSION"
fi

"$PYTHON" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__); print(llama_cpp.llama_print_system_info().decode())"
