#!/usr/bin/env bash
# Round 41 (prepared in session 15; ~6 min): the camera branch's beta discount as one Triton launch inside the GDN
# layer op (kernels.prep.ucpe_beta_discount; the inflation mean, clamp_min and division were three eager kernels per
# GDN block call, 225 per chunk, on the camera branch's side stream, which is likely the longer branch). A/B in one
# machine session: the FP8 static generator (official+tconv) as is, and with the discount put back on the eager
# reference ops (the code before, patched in for the run); then the profile; GPU tests of the prep kernels and of the
# full-config fast path against the reference kernels. Both generator runs also carry the chunk's RoPE / ray tables
# built once per chunk (runtime.sampler, session 15): against rounds 38-39 (131.7-132.0 ms) that times the two
# together; the profile's launch count shows the eager kernels that are gone.
source bench/gpu_setup.sh
FILTER="Warn\|W12\|_warn\|warnings.warn"
ARGS="bench --precision fp8 --act-scales static --scope official+tconv --chunks 8 --warmup 3 --compile --no-decode"
{
echo "== GPU tests: ucpe preps + beta discount at model shape; full config, fast path vs reference kernels"
timeout 150 python3 -m pytest tests/gpu/test_gdn_kernels_gpu.py tests/gpu/test_streaming_gpu.py -q -p no:cacheprovider \
  -rfE -k "ucpe_qkv_prep_model_shape or fast_path_equals_the_reference" 2>&1 | grep -E "passed|failed|FAILED|Error|assert" | tail -6
echo "== generator alone, fp8 static official+tconv + compile: beta discount in one launch"
timeout 150 python3 -m runtime.cli $ARGS --json $OUT/bench_fp8_static_tconv_discount_kernel.json 2>&1 | grep -v "$FILTER" | tail -5
echo "== the same with the discount on the eager reference ops (as before)"
timeout 150 python3 -c "
import sys, kernels.gdn_layer as layer, kernels.prep as prep
layer.ucpe_beta_discount = lambda beta, ratio, impl='auto': prep.ucpe_beta_discount_reference(beta, ratio)
from runtime.cli import main
sys.exit(main(sys.argv[1:]))" $ARGS --json $OUT/bench_fp8_static_tconv_discount_eager.json 2>&1 | grep -v "$FILTER" | tail -5
echo "== profile (every kernel), discount kernel"
timeout 130 python3 -m runtime.cli bench --precision fp8 --act-scales static --scope official+tconv --chunks 2 --warmup 2 \
  --compile --no-decode --profile $OUT/profile_fp8_static_tconv.txt --json /tmp/p.json 2>&1 | tail -1
grep -A30 "Every GPU kernel" $OUT/profile_fp8_static_tconv.txt | cut -c1-150
} 2>&1 | tee $OUT/log
