#!/usr/bin/env bash
# The one prepared command for a lent GPU: `bash bench/gpu.sh [python -m bench gpu options]`.
#
# It finds a Python with a CUDA torch and diffusers, then runs `python -m bench gpu` with
# unbuffered output; with $OUT set (the lent machine's result folder) the JSON lines go to
# $OUT/gpu.jsonl as they come and the whole log to $OUT/gpu.log.
#
# The lent machine has no network: its python3 already has torch (CUDA), transformers and
# accelerate, but not diffusers, imageio-ffmpeg or the settings library the product's
# PipelineManager reads (pydantic-settings). Those travel as wheels in .whl/ (ignored by git),
# fetched beforehand on a machine with a package index:
#     bash bench/gpu.sh --fetch-wheels      # here, once: ~39 MB into .whl/
# and the device call carries them: run(command="bash bench/gpu.sh", carry=[".whl"]).
# Where no Python has what it needs and the network is reachable, it falls back to
# `bash .ci/setup` (a .venv with a CUDA torch) like any other machine.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
    # Wheels for the lent machine's Python 3.12 on x86-64, within pyproject.toml's pins.
    # imageio-ffmpeg 0.7.0, not 0.8.1: the newer wheel is 68 MB, over the 64 MiB a call carries
    # (0.5 and 0.6 reject the Fraction fps that generation.media passes).
    exclude=.git/info/exclude
    if ! grep -qx '/.whl/' "$exclude" 2>/dev/null; then
        [ -s "$exclude" ] && [ -n "$(tail -c1 "$exclude")" ] && echo >> "$exclude"
        echo '/.whl/' >> "$exclude"
    fi
    mkdir -p .whl
    PIP="${PIP:-python3 -m pip}"
    [ -x .venv/bin/python ] && PIP=".venv/bin/python -m pip"
    $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 --platform any -d .whl \
        "diffusers==0.42.1" "imageio-ffmpeg==0.7.0" "pydantic==2.14.4" "pydantic-core==2.50.5" \
        "pydantic-settings==2.16.3" "python-dotenv==1.2.4" "typing-inspection==0.4.5" "annotated-types==0.8.0" \
        || exit 1
    ls -l .whl
    exit 0
fi

export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    site="${TMPDIR:-/tmp}/bench-gpu-site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl || exit 1
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

need_cuda=1
for arg in "$@"; do [ "$arg" = "--dry-run" ] && need_cuda=0; done
usable() {
    "$1" -c "import sys, torch, diffusers, transformers, accelerate, pydantic_settings
sys.exit(0 if torch.cuda.is_available() or not $need_cuda else 1)" 2>/dev/null
}
PY=""
for candidate in .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && usable "$candidate"; then
        PY="$candidate"
        break
    fi
done
if [ -z "$PY" ]; then
    echo "no Python with a CUDA torch and diffusers here: running bash .ci/setup" >&2
    bash .ci/setup || exit 1
    PY=.venv/bin/python
fi

args=("$@")
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    args+=(--out "$OUT/gpu.jsonl")
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    "$PY" -m bench gpu "${args[@]}" 2>&1 | tee "$OUT/gpu.log"
    exit "${PIPESTATUS[0]}"
fi
exec "$PY" -m bench gpu "${args[@]}"
