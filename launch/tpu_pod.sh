#!/usr/bin/env bash
# Run giftjax on every worker of a Cloud TPU VM (a pod slice) with plain multi-controller JAX:
# the same `python -m giftjax.main` on all workers, joined by jax.distributed (auto-detected
# on TPU VMs), no Pathways.
#
# Usage:
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE --project=PROJECT --config=configs/X.py \
#       --workdir=DIR [--dry-run] [--no-install] [-- MORE giftjax.main FLAGS...]
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE --project=PROJECT --stop [--dry-run]
#
# What it does:
#   1. install: packs this checkout (git archive HEAD), copies it to every worker and installs
#      it there with pip (extra [tpu]); skipped with --no-install.
#   2. start: starts the same command on all workers in the background (nohup; it survives
#      the ssh session), with GIFTJAX_DISTRIBUTED=auto; each worker logs to ~/giftjax.log.
#   3. stream: follows worker 0's log until its process ends. Ctrl-C (or SIGTERM) here stops
#      the run cleanly: every worker gets SIGTERM, the workers agree on a step, save one
#      checkpoint and exit 0. --stop does the same from another terminal.
# --dry-run prints the exact commands instead of running them.
#
# DIR must be one folder every worker sees (checkpoints are written by all workers together,
# metrics by worker 0): a Filestore/NFS share or a gcsfuse mount of a bucket, mounted at the
# same path on each worker.
#
# Queued resources and preemption: ask for capacity with a queued resource, e.g.
#   gcloud compute tpus queued-resources create NAME --node-id=NAME --zone=ZONE \
#       --project=PROJECT --accelerator-type=v5p-16 --runtime-version=v2-alpha-tpuv5 --spot
# and wait until `gcloud compute tpus queued-resources describe NAME` says ACTIVE. A spot or
# preemptible slice can be taken back: the workers receive SIGTERM first, and the run saves a
# checkpoint at a step they all agree on. Once the slice is back (re-create the queued
# resource), re-run the same launch command: the run resumes from its newest checkpoint in DIR.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

tpu="" zone="" project="" config="" workdir=""
dry_run=0 install=1 stop=0
extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --tpu=*) tpu=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --dry-run) dry_run=1 ;;
    --no-install) install=0 ;;
    --stop) stop=1 ;;
    -h | --help) usage ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown argument '$1' (giftjax.main flags go after --)" >&2; usage ;;
  esac
  shift
done
for name in tpu zone project; do
  [[ -n ${!name} ]] || { echo "error: --$name is required" >&2; usage; }
done
if (( ! stop )); then
  [[ -n $config ]] || { echo "error: --config is required" >&2; usage; }
  [[ -n $workdir ]] || { echo "error: --workdir is required" >&2; usage; }
fi

# Print an argument list so that it can be pasted into a shell (quoting only where needed).
show() {
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then out+=("$a"); else out+=("${a@Q}"); fi
  done
  echo "${out[*]}"
}

run() {
  if (( dry_run )); then show "$@"; else "$@"; fi
}

quote() {  # one shell word, for a command run on the workers
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then echo "$1"; else echo "${1@Q}"; fi
}

gc=(gcloud compute tpus tpu-vm)
where=("--zone=$zone" "--project=$project")
remote_dir=giftjax
log=giftjax.log
pid_file=giftjax.pid

ssh_all() { run "${gc[@]}" ssh "$tpu" --worker=all "${where[@]}" --command="$1"; }

stop_run() {
  ssh_all "if [ -f ~/$pid_file ]; then kill -TERM \"\$(cat ~/$pid_file)\" 2>/dev/null || true; fi"
}

if (( stop )); then
  stop_run
  exit 0
fi

if (( install )); then
  tarball=$(mktemp -u "${TMPDIR:-/tmp}/giftjax.XXXXXX").tar.gz
  if (( dry_run )); then tarball=/tmp/giftjax.tar.gz; fi
  run git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$tarball" HEAD
  run "${gc[@]}" scp "$tarball" "$tpu:giftjax.tar.gz" --worker=all "${where[@]}"
  ssh_all "rm -rf $remote_dir && mkdir -p $remote_dir && tar -xzf giftjax.tar.gz -C $remote_dir && python3 -m pip install -q -e './${remote_dir}[tpu]'"
fi

cmd="cd $remote_dir && GIFTJAX_DISTRIBUTED=auto nohup python3 -m giftjax.main"
for a in "--config=$config" "--workdir=$workdir" "${extra[@]}"; do
  cmd+=" $(quote "$a")"
done
cmd+=" > ~/$log 2>&1 < /dev/null & echo \$! > ~/$pid_file"
ssh_all "$cmd"

if (( dry_run )); then
  run "${gc[@]}" ssh "$tpu" --worker=0 "${where[@]}" \
    --command="tail -n +1 -F ~/$log --pid=\"\$(cat ~/$pid_file)\""
  exit 0
fi
# Stream worker 0's log; Ctrl-C / SIGTERM here stops every worker cleanly (one checkpoint).
trap 'echo "tpu_pod: stopping the run on every worker (SIGTERM: save, then exit)" >&2; stop_run' INT TERM
"${gc[@]}" ssh "$tpu" --worker=0 "${where[@]}" \
  --command="tail -n +1 -F ~/$log --pid=\"\$(cat ~/$pid_file)\"" || true
