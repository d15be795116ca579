#!/usr/bin/env bash
# Nightly regression run: evaluate every checkpoint under CKPT_DIR not yet in the history, compare
# with the baseline, write OUT_ROOT/<date>/report.{html,md} beside the dated run directories
# OUT_ROOT/<date>/<checkpoint>-<sha256[:12]>/ and update OUT_ROOT/history.sqlite.
#
#   CKPT_DIR=/data/ckpts SUITES="tabletop" scripts/nightly.sh [extra asyncvla-eval nightly options]
#
# Example cron line (02:00 every night; exit code 1 = something got significantly worse):
#   0 2 * * * CKPT_DIR=/data/ckpts SUITES=tabletop /path/to/repo/scripts/nightly.sh --episodes-per-task 20 || mail -s "AsyncVLA nightly: regression" team@example.org < /path/to/repo/runs/nightly/latest.log
#
# Exit codes (those of `asyncvla-eval nightly`): 0 nothing significantly worse, 1 something worse,
# 2 bad input; 3 another nightly run still holds the lock.
set -uo pipefail
cd "$(dirname "$0")/.."

: "${CKPT_DIR:?set CKPT_DIR to the directory your training writes checkpoint directories into}"
SUITES="${SUITES:-tabletop}"
OUT_ROOT="${OUT_ROOT:-runs/nightly}"
HISTORY="${HISTORY:-$OUT_ROOT/history.sqlite}"
DATE="${DATE:-$(date -u +%F)}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"

[ -f .venv/bin/activate ] && . .venv/bin/activate
mkdir -p "$OUT_ROOT/logs"
log="$OUT_ROOT/logs/$DATE.log"

# One night at a time: a slow night must not overlap the next one on the same history.
exec 9>"$OUT_ROOT/.lock"
if ! flock -n 9; then
  echo "nightly: another run holds $OUT_ROOT/.lock; not starting" >&2
  exit 3
fi

# shellcheck disable=SC2086  # SUITES is a space-separated list on purpose
asyncvla-eval nightly --ckpt-dir "$CKPT_DIR" $SUITES --out-root "$OUT_ROOT" --history "$HISTORY" \
  --date "$DATE" -q "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
cp "$log" "$OUT_ROOT/latest.log"
echo "nightly: exit code $rc (0 nothing worse, 1 something worse, 2 bad input); log $log"
exit "$rc"
