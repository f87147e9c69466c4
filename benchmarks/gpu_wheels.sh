#!/usr/bin/env bash
# Download, on a machine where pip reaches PyPI, the wheels the GPU machine lacks (its image has
# torch 2.11, numpy, pyyaml, networkx, typing-extensions; not pydantic or graphviz) into .whl/,
# for Python 3.12 on x86-64 Linux. gpu_check.sh installs them there (carry .whl). Never torch.
# The versions are this project's venv's (pydantic-core must be the one pydantic pins).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${WHEEL_DIR:-.whl}
grep -qsx '/.whl/' "$(git rev-parse --git-common-dir)/info/exclude" \
    || echo '/.whl/' >> "$(git rev-parse --git-common-dir)/info/exclude"
for spec in pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
            typing-inspection==0.4.5 typing-extensions==4.16.0 graphviz==0.21; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$dir" "$spec"
done
ls -l "$dir"
