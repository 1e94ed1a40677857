#!/usr/bin/env bash
# Prepare the demo bundle: synthetic sessions (or $SKIPREC_DATA) -> small model -> ONNX bundle.
#
# Used by `make demo` (on the host, inside .venv) and by the Docker `trainer` image, so both
# produce the bundle the same way. Idempotent: when BUNDLE_DIR/manifest.json exists, nothing
# is done. `skiprec export` writes the bundle atomically (staging directory, then rename), so
# an interrupted run never leaves a half-written bundle that a later run would take as done.
#
#   scripts/demo.sh BUNDLE_DIR WORK_DIR
#
# Environment:
#   SKIPREC_DATA         session/event file to train on instead of synthetic sessions
#   SKIPREC_DATA_FORMAT  its format (mssd-derived, mssd-log, events, ml-1m); detected if unset
#   DEMO_CONFIG          training preset (default: training/configs/demo.toml)
#   SKIPREC              the skiprec command (default: skiprec on PATH)
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 BUNDLE_DIR WORK_DIR" >&2
  exit 2
fi
bundle_dir=${1%/}
work_dir=${2%/}
skiprec=${SKIPREC:-skiprec}
config=${DEMO_CONFIG:-training/configs/demo.toml}

if [ -f "$bundle_dir/manifest.json" ]; then
  echo "demo: bundle already at $bundle_dir (remove it, or run 'make demo-clean', to retrain)"
  exit 0
fi

mkdir -p "$work_dir" "$(dirname "$bundle_dir")"

if [ -n "${SKIPREC_DATA:-}" ]; then
  data=$SKIPREC_DATA
  echo "demo: training on SKIPREC_DATA=$data"
else
  data=$work_dir/sessions.csv
  if [ ! -f "$data" ]; then
    echo "demo: generating synthetic sessions -> $data"
    "$skiprec" synth --out "$data.tmp"
    mv "$data.tmp" "$data"
  fi
fi
format_args=()
if [ -n "${SKIPREC_DATA_FORMAT:-}" ]; then
  format_args=(--format "$SKIPREC_DATA_FORMAT")
fi

run_dir=$work_dir/run
echo "demo: training ($config) -> $run_dir"
start=$SECONDS
rm -rf "$run_dir"
"$skiprec" train --data "$data" "${format_args[@]}" --config "$config" --out "$run_dir"
echo "demo: trained in $((SECONDS - start)) s"

echo "demo: exporting -> $bundle_dir"
start=$SECONDS
"$skiprec" export --run "$run_dir" --out "$bundle_dir" --data "$data"
echo "demo: exported in $((SECONDS - start)) s; bundle ready at $bundle_dir"
