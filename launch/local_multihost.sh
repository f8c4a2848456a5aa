#!/usr/bin/env bash
# Simulate a multi-host job on one machine: N CPU processes, each with its own fake devices,
# joined by jax.distributed over 127.0.0.1 (gloo collectives), each running
#   python -m giftjax.main ARGS...
#
# Usage: launch/local_multihost.sh N ARGS...
#   e.g. launch/local_multihost.sh 2 --config=configs/smoke_cpu.py:short --workdir=/tmp/mh
#
# Environment:
#   GIFTJAX_LOCAL_DEVICES  fake CPU devices per process (default 8 / N)
#   GIFTJAX_LOG_DIR        where processes 1..N-1 write process_<i>.log, and every process
#                          its id to process_<i>.pid (default: a new temporary folder,
#                          printed at the start)
#   GIFTJAX_INIT_TIMEOUT   seconds to wait for every process to join (default 300)
#   PYTHON                 the interpreter (default: python)
#
# Process 0's output goes to the terminal. When any process fails, the others are stopped
# (SIGTERM, then SIGKILL after GIFTJAX_KILL_GRACE seconds, default 30) and the launcher exits
# with the first failing process's status. SIGTERM or SIGINT to the launcher is passed on to
# every process: the trainer then saves one checkpoint at a step all processes agree on and
# exits 0, and re-running the same command resumes from it.
set -euo pipefail

usage() {
  echo "usage: $0 N ARGS...   (N >= 1 processes, each running python -m giftjax.main ARGS...)" >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
num=$1
shift
[[ $num =~ ^[1-9][0-9]*$ ]] || { echo "error: N=$num; expected an integer >= 1." >&2; usage; }

devices=${GIFTJAX_LOCAL_DEVICES:-}
if [[ -z $devices ]]; then
  if (( 8 % num )); then
    echo "error: 8 fake devices do not split over N=$num processes; set GIFTJAX_LOCAL_DEVICES." >&2
    exit 2
  fi
  devices=$(( 8 / num ))
fi
[[ $devices =~ ^[1-9][0-9]*$ ]] || {
  echo "error: GIFTJAX_LOCAL_DEVICES=$devices; expected an integer >= 1." >&2
  exit 2
}
python=${PYTHON:-python}
grace=${GIFTJAX_KILL_GRACE:-30}
log_dir=${GIFTJAX_LOG_DIR:-}
if [[ -z $log_dir ]]; then
  log_dir=$(mktemp -d "${TMPDIR:-/tmp}/giftjax-multihost.XXXXXX")
fi
mkdir -p "$log_dir"

# A free TCP port for the coordinator (process 0 binds it).
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# The device count flag replaces any given one; other XLA flags are kept.
xla_flags=""
for flag in ${XLA_FLAGS:-}; do
  [[ $flag == --xla_force_host_platform_device_count=* ]] || xla_flags+="$flag "
done
xla_flags+="--xla_force_host_platform_device_count=$devices"

echo "local_multihost: $num processes x $devices CPU devices, coordinator 127.0.0.1:$port," \
  "logs of processes 1..$(( num - 1 )) in $log_dir" >&2

declare -A alive=()  # pid -> 1, for each process not yet reaped
stop_all() {
  local sig=$1 pid
  for pid in "${!alive[@]}"; do
    kill "-$sig" "$pid" 2>/dev/null || true
  done
}

# shellcheck disable=SC2329  # invoked by the traps below
forward() {
  echo "local_multihost: $1 received; passing it on to every process" >&2
  stop_all TERM
}
trap 'forward SIGTERM' TERM
trap 'forward SIGINT' INT

run_one() {  # run_one I ARGS...: process I, replacing this (background) subshell
  local i=$1
  shift
  exec env JAX_PLATFORMS=cpu XLA_FLAGS="$xla_flags" PYTHONUNBUFFERED=1 \
    GIFTJAX_COORDINATOR="127.0.0.1:$port" GIFTJAX_NUM_PROCESSES="$num" \
    GIFTJAX_PROCESS_ID="$i" "$python" -m giftjax.main "$@"
}

for (( i = 0; i < num; i++ )); do
  if (( i == 0 )); then
    run_one "$i" "$@" &
  else
    run_one "$i" "$@" > "$log_dir/process_$i.log" 2>&1 &
  fi
  alive[$!]=1
  echo "$!" > "$log_dir/process_$i.pid"
done

# Poll the processes; the first failure stops the rest (SIGTERM, then SIGKILL after the grace).
status=0
deadline=""
while (( ${#alive[@]} > 0 )); do
  for pid in "${!alive[@]}"; do
    kill -0 "$pid" 2>/dev/null && continue
    code=0
    wait "$pid" || code=$?
    unset "alive[$pid]"
    if (( code != 0 && status == 0 )); then
      status=$code
      echo "local_multihost: process $pid exited with status $code; stopping the others" >&2
      stop_all TERM
      deadline=$(( SECONDS + grace ))
    fi
  done
  if [[ -n $deadline ]] && (( SECONDS >= deadline )); then
    stop_all KILL
  fi
  sleep 0.2
done
exit "$status"
