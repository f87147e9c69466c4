#!/usr/bin/env bash
# The one GPU check of issue 10 (< 5 min on an H200, so that a rerun fits a 15-minute lease):
#   1. install what the GPU machine lacks from carried wheels in .whl/ (benchmarks/gpu_wheels.sh
#      downloads them here beforehand; the machine cannot reach PyPI),
#   2. run the CUDA-marked tests (tests/test_gpu_pipeline.py -m cuda),
#   3. benchmark DenseFlow-74-10 (benchmarks/gpu_bench.py) and write $OUT/gpu_check.json.
# Without CUDA, or with --cpu-dry-run, it runs the CPU fallback instead: the same benchmark code
# on a tiny spec for a few steps (it shows the path works, not speed), and the same JSON.
#
#   bash benchmarks/gpu_wheels.sh            # here, once: fetch the wheels into .whl/
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=420)
#   bash benchmarks/gpu_check.sh --cpu-dry-run   # anywhere: the CPU fallback
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[[ "${1:-}" == "--cpu-dry-run" ]] && dry=1
py=${PYTHON:-python3}
start=$(date +%s)
export PYTHONUNBUFFERED=1
json=${OUT:+$OUT/gpu_check.json}

if compgen -G ".whl/*.whl" >/dev/null; then
    if (( dry )); then
        echo "dry run: would install $(ls .whl/*.whl | wc -l) wheel(s) from .whl/"
    else
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/flowgraph-site .whl/*.whl || exit 2
        export PYTHONPATH=/tmp/flowgraph-site${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! "$py" -c "import torch, numpy, yaml, networkx, pydantic" 2>/dev/null; then
    echo "missing Python packages (pydantic?): run benchmarks/gpu_wheels.sh where pip works" \
         "and carry .whl/" >&2
    exit 2
fi

cuda=$("$py" -c "import torch; print(int(torch.cuda.is_available()))")
if (( dry )) || [[ "$cuda" != 1 ]]; then
    echo "CPU fallback (no CUDA or --cpu-dry-run): tiny spec, few steps, the same code path;" \
         "CUDA tests skipped"
    exec "$py" benchmarks/gpu_bench.py --cpu-fallback ${json:+--out "$json"}
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
log=${OUT:-/tmp}/pytest_cuda.log
"$py" -m pytest tests/test_gpu_pipeline.py -m cuda -q -p no:cacheprovider 2>&1 | tee "$log"
tests_rc=${PIPESTATUS[0]}
summary=$(tail -n 1 "$log")
left=$(( 285 - ($(date +%s) - start) ))
"$py" benchmarks/gpu_bench.py --deadline "$left" --tests "$summary (exit $tests_rc)" \
    ${json:+--out "$json"}
bench_rc=$?
echo "gpu_check: tests exit $tests_rc, benchmark exit $bench_rc, $(( $(date +%s) - start )) s"
exit $(( tests_rc || bench_rc ))
