#!/usr/bin/env bash
# The GPU check: one prepared script for a lent GPU machine (H100/H200, no network).
#
# It installs mp from wheels carried in ./wheels (no index), runs the GPU tests
# (pytest -m gpu) and the fastMRI-size speed benchmark on CUDA, printing
# everything; it exits non-zero when a step fails (install, tests, a command of
# the benchmark, or a speed target).
#
# 1. HERE (a machine with network), build the wheels folder once:
#
#        bench/gpu_check.sh --build-wheels
#
#    which runs, from the repository root:
#        pip wheel --no-deps --no-build-isolation -w wheels .   # mpcli itself (with mpcli/weights/*.safetensors if present)
#        pip download --no-deps -d wheels sigpy nibabel pydicom ismrmrd xsdata   # pure Python
#        pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d wheels PyWavelets
#    (the GPU image already has torch, numpy, scipy, h5py, numba, tqdm, typer, rich,
#    safetensors, matplotlib, cupy, pytest, hypothesis, scikit-image: they are not carried.)
#    Keep the folder out of git: echo /wheels/ >> .git/info/exclude
#
# 2. On the GPU machine (the device tool), from the repository root:
#
#        run(command="bash bench/gpu_check.sh", carry=["wheels"], timeout_s=600)
#
#    Output: stdout/stderr, plus $OUT/gpu_check.log and $OUT/speed.json when $OUT is set.
#    Knobs (environment): SPEED_ARGS (bench/speed.py arguments, default
#    "--fastmri-size --device cuda --repeats 2"), SPEED_TIMEOUT (s, default 420),
#    PYTHON (default python3), PIP_EXTRA (extra pip install arguments), ALLOW_CPU=1
#    (dry-run this script's flow on a machine without CUDA: it then fails nothing for that).
#
# Budget: install ~0.5 min, GPU tests ~0.5 min, speed ~3-6 min (writing a 1 GB
# [35, 15, 640, 368] file, 3 reconstruct commands × REPEATS, one adapt), training
# throughput ~1 min (TRAIN_TIMEOUT, default 240 s). Then, with the time left, the
# curriculum itself: bench/train_prior.py --device cuda --amp --workers 8.

set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [[ "${1:-}" == "--build-wheels" ]]; then
    set -e
    mkdir -p wheels
    $PY -m pip wheel --no-deps --no-build-isolation -w wheels .
    $PY -m pip download --no-deps -d wheels "sigpy>=0.1.26" "nibabel>=5" "pydicom>=3.0" "ismrmrd>=1.14" xsdata
    $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d wheels "PyWavelets>=1.4"
    ls -la wheels
    du -sh wheels
    exit 0
fi

export PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

check() {
status=0

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: unavailable"
$PY - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:
    import cupy
    print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())
except Exception as exc:  # noqa: BLE001
    print("cupy: unavailable:", exc)
EOF
if [[ "${ALLOW_CPU:-0}" != 1 ]] && ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "FAIL: torch sees no CUDA device"
    return 4
fi

step "install mp from wheels/ (no index)"
if [[ ! -d wheels ]]; then
    echo "no wheels/ folder: build it first with bench/gpu_check.sh --build-wheels and carry it"
    return 3
fi
ls wheels
if ! $PY -m pip install -q --no-index --find-links wheels --no-cache-dir ${PIP_EXTRA:-} mpcli; then
    echo "FAIL: pip install --no-index --find-links wheels mpcli"
    return 3
fi
$PY -c "import mpcli.cli, sigpy, pywt, nibabel, pydicom, ismrmrd; print('imports ok; mp', mpcli.__version__)" || status=1
command -v mp >/dev/null && mp --version

step "pytest -m gpu"
if ! $PY -m pytest -m gpu -q -p no:cacheprovider -rs; then
    echo "FAIL: GPU tests"
    status=1
fi

SPEED_ARGS=${SPEED_ARGS:---fastmri-size --device cuda --repeats 2}
step "bench/speed.py $SPEED_ARGS"
# shellcheck disable=SC2086  # SPEED_ARGS is a list of arguments
timeout "${SPEED_TIMEOUT:-420}" $PY bench/speed.py $SPEED_ARGS ${OUT:+--json "$OUT/speed.json"}
rc=$?
case $rc in
    0) ;;
    2) echo "FAIL: a speed target was missed (see the table)"; status=1 ;;
    124) echo "FAIL: speed benchmark ran past ${SPEED_TIMEOUT:-420} s"; status=1 ;;
    *) echo "FAIL: speed benchmark exited $rc"; status=1 ;;
esac

step "bench/train_throughput.py on CUDA (bfloat16 autocast; examples in place vs 8 workers)"
if ! timeout "${TRAIN_TIMEOUT:-240}" $PY bench/train_throughput.py --device cuda --amp --workers 0,8 --steps 6; then
    echo "FAIL: training throughput on CUDA"
    status=1
fi

step "done: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
return $status
}

LOG=${OUT:+$OUT/gpu_check.log}
check 2>&1 | tee "${LOG:-/tmp/gpu_check.log}"
exit "${PIPESTATUS[0]}"
