# Sourced by the bench/gpu_round*.sh scripts on the device machine: install the carried wheels (.whl: diffusers)
# into /tmp/site without touching the machine's torch, and set the environment every round uses.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
