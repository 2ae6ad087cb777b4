#!/usr/bin/env bash
# Run (or resume) a queue of CPU reproductions one after another at one thread, so that the other core stays free.
#   bash benchmarks/cpu_queue.sh RUNS_ROOT DATA_DIR NAME=CONFIG [NAME=CONFIG ...]
# Each run goes to RUNS_ROOT/NAME; a run directory that already holds a run is resumed (eqprop train --resume), a
# finished one is skipped. The log of each run is RUNS_ROOT/NAME.log. Start it with nohup/setsid to outlive the shell.
# A run stopped by a signal (SIGTERM to stop for the day) stops the queue; a run that fails otherwise does not.
set -u
root=$1; data=$2; shift 2
mkdir -p "$root"
for item in "$@"; do
  name=${item%%=*}; config=${item#*=}
  dir="$root/$name"
  if [ -f "$dir/config.json" ]; then
    if python3 -c "import json,sys; r=[json.loads(l) for l in open('$dir/metrics.jsonl')]; c=json.load(open('$dir/config.json')); sys.exit(0 if r and r[-1]['epoch'] >= c['optim']['epochs'] else 1)" 2>/dev/null; then
      echo "$(date -Is) $name: finished, skipped" >> "$root/queue.log"; continue
    fi
    echo "$(date -Is) $name: resume" >> "$root/queue.log"
    eqprop train --resume "$dir" threads=1 progress=false >> "$root/$name.log" 2>&1; rc=$?
  else
    echo "$(date -Is) $name: start $config" >> "$root/queue.log"
    eqprop train "$config" data_dir="$data" threads=1 progress=false out_dir="$dir" >> "$root/$name.log" 2>&1; rc=$?
  fi
  echo "$(date -Is) $name: exit $rc" >> "$root/queue.log"  # rc: $(date) would reset $?
  if [ "$rc" -ge 128 ]; then  # stopped by a signal (SIGTERM: 143): the queue stops too, the rest stays queued
    echo "$(date -Is) queue stopped: $name was interrupted (exit $rc)" >> "$root/queue.log"; exit "$rc"
  fi
done
