#!/bin/bash
# Prepare the GPU pass on this machine (it reaches the package index), then print the device-tool
# calls that run it on a lent H100/H200:   bash benches/gpu_pass.sh
#
# 1. packs .gpu/ once with ../shared/offline-gpu/pack-wheels.sh: DALI 2.4 and its JPEG libraries,
#    plus EXTRA_WHEELS for Python 3.12 (default: PyAV 18.1.0, PyNvVideoCodec 2.2.4, Inf-CL 1.2.1),
#    cut into 50 MB parts (.gpu/ is in .gitignore; 6 parts, 2026-11-28);
# 2. runs the dry run (toy sizes on the CPU: the command works before a GPU sees it);
# 3. prints one `run` call per part, to be made back to back (the machine goes back 30 s after a
#    call, and the staged parts with it). The first call measures the kernels and the synthetic
#    training step (no optional part needed); the last one installs DALI, PyAV, PyNvVideoCodec
#    and Inf-CL from the staged parts and measures the rest. Sum of the two budgets: 480 s; about
#    12 of the 15 device minutes with the start and the transfers. Rerun a step that timed out or
#    was cut by the budget with `--only NAME` while the machine is warm, then give_back.
# Env: EXTRA_WHEELS, OFFLINE_GPU (folder of pack-wheels.sh), SKIP_DRY_RUN=1.
set -euo pipefail
cd "$(dirname "$0")/.."
export EXTRA_WHEELS="${EXTRA_WHEELS:-av==18.1.0 pynvvideocodec==2.2.4 inf-cl==1.2.1}"
offline=${OFFLINE_GPU:-../shared/offline-gpu}
if [ ! -f .gpu/parts.sha256 ]; then
  "$offline/pack-wheels.sh" .gpu
fi
if [ "${SKIP_DRY_RUN:-0}" != 1 ]; then
  python benches/gpu_pass.py --dry-run --out .gpu/dry-run
fi
FIRST=tests_kernels,kernels,train_eager,train_compiled   # steps that need no optional part
pass="PYTHONUNBUFFERED=1 python3 benches/gpu_pass.py --out \$OUT"
build="python3 -m pip install -q --no-build-isolation --no-deps -e ."
parts=(.gpu/wheels.tar.part*)
last=$(( ${#parts[@]} - 1 ))
echo
echo "Device-tool calls, back to back (each carries the three scripts and one part):"
for index in "${!parts[@]}"; do
  part=${parts[$index]}
  stage="bash .gpu/stage.sh $part"
  if [ "$index" = 0 ] && [ "$last" != 0 ]; then
    timeout=330; command="$stage && $build && $pass --only $FIRST --budget 270"
  elif [ "$index" = "$last" ]; then
    timeout=270; command="$stage && source .gpu/install.sh .gpu && (python3 -c 'import vito_fast._C' 2>/dev/null || $build) && $pass"
    [ "$last" = 0 ] && { timeout=480; command="$command --budget 420"; } || command="$command --skip $FIRST --budget 210"
  else
    timeout=60; command="$stage"
  fi
  python3 - "$timeout" "$part" "$command" <<'PY'
import json, sys
timeout, part, command = sys.argv[1:]
print("run " + json.dumps({"timeout_s": int(timeout), "command": command,
                           "carry": [".gpu/stage.sh", ".gpu/install.sh", ".gpu/parts.sha256", part]}))
PY
done
echo "then: status (device time left), a rerun with --only NAME if needed, give_back."
