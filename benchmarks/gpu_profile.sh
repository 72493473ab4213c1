#!/bin/bash
# Where the policy replica's time goes during phase C: runs gpu_bench.py's C phase (one Serve
# replica, core cohort dispatch) at N = 1 and N = 64 and samples the replica's Python threads with
# py-spy (carried as a wheel in DIR/wheels) for 8 s inside each measurement window.
# Usage (GPU machine, DIR carried): bash DIR/code/benchmarks/gpu_profile.sh DIR [extra gpu_bench args]
# Output in $OUT: gpu_bench_profile.json, pyspy_n1.txt, pyspy_n64.txt (py-spy raw, --idle, one line
# per stack with the thread name first), and the log. Summarise with benchmarks/pyspy_summary.py.
set -uo pipefail
dir=$(cd "${1:?usage: gpu_profile.sh DIR [gpu_bench args]}" && pwd); shift
out=${OUT:-/tmp/out}; mkdir -p "$out"
SKIP_TESTS=1 bash "$dir/code/benchmarks/run_gpu.sh" "$dir" --phases C --ns 1,64 --c-runs serve:10 --window 12 \
  --tag profile "$@" > "$out/profile_run.log" 2>&1 &
bench=$!
spy=$(find /tmp/site -name py-spy -type f 2>/dev/null | head -1)
until [ -n "$spy" ]; do sleep 1; spy=$(find /tmp/site -name py-spy -type f 2>/dev/null | head -1); done
chmod +x "$spy"
wait_for() { until grep -q "$1" "$out/profile_run.log" 2>/dev/null; do sleep 0.5; kill -0 $bench 2>/dev/null || return 1; done; }
record() {  # $1: label; the Serve replica is the Ray worker process whose title names it
  local pid; pid=$(pgrep -f "ServeReplica" | head -1)
  echo "py-spy on pid ${pid:-none} ($1)"
  [ -n "$pid" ] && "$spy" record --idle --threads --nonblocking -r 200 -d 8 -p "$pid" -f raw -o "$out/pyspy_$1.txt" \
    > "$out/pyspy_$1.log" 2>&1
}
wait_for "C: worker serving" && sleep 11 && record n1      # N = 1: 8 s warm-up, then the 12 s window
wait_for "C: N=  1" && sleep 11 && record n64              # N = 64
wait $bench
tail -30 "$out/profile_run.log"
