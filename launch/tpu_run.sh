#!/usr/bin/env bash
# Runs an ia-jax entry point on every worker of a Cloud TPU VM slice at once, creating the slice first
# if asked: ships this checkout's working tree to every worker, installs it with the `tpu` extra, starts
# the entry point on all workers together, writes one log per worker and exits with one clear status.
# `launch/tpu_run.sh --help` for usage; launch/README.md for a 70B recipe. Written for bash 3.2+ (macOS).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_run.sh --tpu=NAME --zone=ZONE --project=PROJECT --accelerator=TYPE --config=FILE
                         [options] [-- ARGS for the entry point...]

Copies this checkout (its working tree as it is, untracked files included, ignored ones not) to every
worker of the TPU VM slice NAME, installs it there with the `tpu` extra into ~/ia-jax-venv, then runs
  python -m ENTRY --config=FILE ARGS...
on all workers at once. JAX multi-host needs no flags: ia_jax initialises itself on TPU VMs.

Required:
  --tpu=NAME               TPU VM name.
  --zone=ZONE              e.g. us-east5-a.
  --project=PROJECT        Google Cloud project id.
  --accelerator=TYPE       e.g. v5p-128, v6e-64, v5litepod-16, v4-32.
  --config=FILE            config file relative to the repository root, e.g. configs/llama3_3_70b.py.

Options:
  --create=MODE            none (default): the TPU exists already.
                           on-demand | spot: `gcloud compute tpus tpu-vm create`.
                           queued: a queued resource NAME-qr for node NAME, waited for until ACTIVE.
                           A TPU that exists and is READY (queued resource ACTIVE or still waiting) is
                           reused; one that is PREEMPTED or TERMINATED (FAILED or SUSPENDED) is deleted
                           and created again, so re-running the same command after a preemption resumes.
  --spot                   with --create=queued: ask for spot capacity.
  --runtime=VERSION        TPU software version. Default by accelerator: v6e -> v2-alpha-tpuv6e,
                           v5p -> v2-alpha-tpuv5, v5litepod -> v2-alpha-tpuv5-lite,
                           v2/v3/v4 -> tpu-ubuntu2204-base; needed for any other type.
  --entry=MODULE           entry point module (default ia_jax.main).
  --logs=DIR               where the per-worker logs go (default ./tpu_logs/NAME-YYYYmmdd-HHMMSS).
  --num_workers=N          number of workers (default: the TPU's network endpoints, counted with
                           `tpu-vm describe`; with --dry_run, from the accelerator type).
  --queue_timeout=SECONDS  longest wait for a queued resource to become ACTIVE (default 86400).
  --delete_after           delete the TPU (the queued resource with --create=queued) when the run
                           ends, whatever its result (not when interrupted: then it prints the command).
  --dry_run                print every command it would run; run none of them.
  --help                   this text.

Exit status: 0 when every worker exits 0; 75 when a worker was preempted (it saved a checkpoint:
re-run the same command to resume); otherwise the status of the first worker that failed; 1 when a
step before the run failed; 2 for bad flags; 130 or 143 when interrupted (the workers are sent SIGTERM).

Environment: TPU_RUN_POLL_SECONDS (default 60): how often a queued resource's state is checked.
EOF
}

# The entry point's exit status after SIGTERM: it saved a checkpoint, and re-running resumes (EX_TEMPFAIL).
readonly PREEMPTED_STATUS=75
# The Python the workers' venv is made with (Ubuntu 22.04 TPU images ship 3.10; ia-jax needs 3.11+).
readonly REMOTE_PYTHON=3.12
readonly TAIL_LINES=20
readonly MAX_TAILS=4

TPU="" ZONE="" PROJECT="" ACCELERATOR="" CONFIG="" CREATE=none SPOT=0 RUNTIME="" ENTRY=ia_jax.main
LOGS="" NUM_WORKERS="" QUEUE_TIMEOUT=86400 DELETE_AFTER=0 DRY_RUN=0
ENTRY_ARGS=()
POLL_SECONDS=${TPU_RUN_POLL_SECONDS:-60}

usage_error() {
  echo "tpu_run.sh: $*" >&2
  echo "Run 'launch/tpu_run.sh --help' for usage." >&2
  exit 2
}

die() {
  echo "tpu_run.sh: error: $*" >&2
  exit 1
}

# One word, quoted for a POSIX shell only when it needs it, into QUOTED: readable in --dry_run output,
# and safe as part of the command string that ssh hands to the worker's shell (single quotes escape all).
QUOTED=""
quote() {
  local rest=$1 out=""
  case $rest in
    '') QUOTED="''"; return ;;
    *[!-[:alnum:]_./:=,@%+]*) ;;
    *) QUOTED=$rest; return ;;
  esac
  while [[ $rest == *"'"* ]]; do
    out+="${rest%%"'"*}'\\''"
    rest=${rest#*"'"}
  done
  QUOTED="'$out$rest'"
}

# Prints the words quoted and joined by spaces.
quote_all() {
  local word line=""
  for word in "$@"; do
    quote "$word"
    line+="${line:+ }$QUOTED"
  done
  printf '%s' "$line"
}

show() {
  echo "+ $(quote_all "$@")"
}

# Prints a command and, unless --dry_run, runs it.
run() {
  show "$@"
  if ((!DRY_RUN)); then
    "$@"
  fi
}

note() {
  echo "# $*"
}

parse_flags() {
  local arg
  while (($#)); do
    arg=$1
    shift
    case $arg in
      --) ENTRY_ARGS=("$@"); return ;;
      -h | --help) usage; exit 0 ;;
      --tpu=*) TPU=${arg#*=} ;;
      --zone=*) ZONE=${arg#*=} ;;
      --project=*) PROJECT=${arg#*=} ;;
      --accelerator=*) ACCELERATOR=${arg#*=} ;;
      --config=*) CONFIG=${arg#*=} ;;
      --create=*) CREATE=${arg#*=} ;;
      --runtime=*) RUNTIME=${arg#*=} ;;
      --entry=*) ENTRY=${arg#*=} ;;
      --logs=*) LOGS=${arg#*=} ;;
      --num_workers=*) NUM_WORKERS=${arg#*=} ;;
      --queue_timeout=*) QUEUE_TIMEOUT=${arg#*=} ;;
      --spot) SPOT=1 ;;
      --delete_after) DELETE_AFTER=1 ;;
      --dry_run) DRY_RUN=1 ;;
      --spot=* | --delete_after=* | --dry_run=*) usage_error "${arg%%=*} takes no value (got '$arg')" ;;
      --*) usage_error "unknown flag ${arg%%=*} (flags take the form --name=value; entry point arguments go after --)" ;;
      *) usage_error "unexpected argument '$arg' (entry point arguments go after --)" ;;
    esac
  done
}

check_flags() {
  local flag value
  for flag in tpu zone project accelerator config; do
    case $flag in
      tpu) value=$TPU ;; zone) value=$ZONE ;; project) value=$PROJECT ;;
      accelerator) value=$ACCELERATOR ;; config) value=$CONFIG ;;
    esac
    [[ -n $value ]] || usage_error "missing required flag --$flag"
  done
  case $CREATE in
    none | on-demand | spot | queued) ;;
    *) usage_error "--create must be none, on-demand, spot or queued (got '$CREATE')" ;;
  esac
  if ((SPOT)) && [[ $CREATE != queued ]]; then
    usage_error "--spot goes with --create=queued (for a spot TPU created directly, use --create=spot)"
  fi
  [[ -z $NUM_WORKERS || $NUM_WORKERS =~ ^[1-9][0-9]*$ ]] || usage_error "--num_workers must be a positive integer (got '$NUM_WORKERS')"
  [[ $QUEUE_TIMEOUT =~ ^[0-9]+$ ]] || usage_error "--queue_timeout must be a number of seconds (got '$QUEUE_TIMEOUT')"
  [[ $POLL_SECONDS =~ ^[0-9]+([.][0-9]+)?$ ]] || usage_error "TPU_RUN_POLL_SECONDS must be a number of seconds (got '$POLL_SECONDS')"
  [[ $ENTRY =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || usage_error "--entry must be a Python module name (got '$ENTRY')"
  if [[ -z $RUNTIME ]]; then
    RUNTIME=$(default_runtime "$ACCELERATOR")
    [[ -n $RUNTIME ]] || usage_error "--runtime is needed: no default TPU software version for accelerator '$ACCELERATOR'"
  fi
}

# Cloud TPU's recommended software versions for JAX, per TPU generation.
default_runtime() {
  case ${1%-*} in
    v6e) echo v2-alpha-tpuv6e ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v5litepod) echo v2-alpha-tpuv5-lite ;;
    v2 | v3 | v4) echo tpu-ubuntu2204-base ;;
  esac
}

# Workers (hosts) of a slice, from its accelerator type; used by --dry_run only, a real run counts the
# TPU's network endpoints. v2/v3/v4/v5p-N count TensorCores, 8 per host (v4/v5p: 4 chips of 2 cores);
# v5litepod-N and v6e-N count chips: up to 8 chips fit one host, larger slices have 4 chips per host.
workers_for_accelerator() {
  local family=${1%-*} size=${1##*-}
  [[ $size =~ ^[0-9]+$ ]] || return 0
  case $family in
    v2 | v3 | v4 | v5p) echo $((size > 8 ? size / 8 : 1)) ;;
    v5litepod | v6e) echo $((size > 8 ? size / 4 : 1)) ;;
  esac
}

GCLOUD_LOCATION=()
QUEUED_RESOURCE=""

tpu_state() {
  gcloud compute tpus tpu-vm describe "$TPU" "${GCLOUD_LOCATION[@]}" --format='value(state)' 2>/dev/null || true
}

queued_state() {
  gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" "${GCLOUD_LOCATION[@]}" \
    --format='value(state.state)' 2>/dev/null || true
}

create_tpu() {
  local create=(gcloud compute tpus tpu-vm create "$TPU" "${GCLOUD_LOCATION[@]}"
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME")
  if [[ $CREATE == spot ]]; then
    create+=(--spot)
  fi
  if ((DRY_RUN)); then
    show gcloud compute tpus tpu-vm describe "$TPU" "${GCLOUD_LOCATION[@]}" --format='value(state)'
    note "not found: create it; PREEMPTED or TERMINATED: delete it, then create it; READY: reuse it"
    show "${create[@]}"
    return
  fi
  local state
  state=$(tpu_state)
  case $state in
    "") ;;
    READY) echo "TPU $TPU exists and is READY: reusing it."; return ;;
    PREEMPTED | TERMINATED)
      echo "TPU $TPU is $state: deleting it to create it again."
      run gcloud compute tpus tpu-vm delete "$TPU" "${GCLOUD_LOCATION[@]}" --quiet
      ;;
    *) die "TPU $TPU exists in state $state; wait until it is READY (then use --create=none) or delete it" ;;
  esac
  run "${create[@]}"
}

create_queued() {
  local create=(gcloud compute tpus queued-resources create "$QUEUED_RESOURCE" --node-id="$TPU"
    "${GCLOUD_LOCATION[@]}" --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME")
  if ((SPOT)); then
    create+=(--spot)
  fi
  local describe=(gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" "${GCLOUD_LOCATION[@]}"
    --format='value(state.state)')
  if ((DRY_RUN)); then
    show "${describe[@]}"
    note "not found: create it; FAILED or SUSPENDED: delete it (--force), then create it; otherwise wait for it"
    show "${create[@]}"
    note "then the describe above every ${POLL_SECONDS}s until the state is ACTIVE (at most ${QUEUE_TIMEOUT}s)"
    return
  fi
  local state
  state=$(queued_state)
  case $state in
    "") run "${create[@]}" ;;
    FAILED | SUSPENDED)
      echo "Queued resource $QUEUED_RESOURCE is $state: deleting it to create it again."
      run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" "${GCLOUD_LOCATION[@]}" --force --quiet
      run "${create[@]}"
      ;;
    *) echo "Queued resource $QUEUED_RESOURCE exists ($state): waiting for it." ;;
  esac
  local start=$SECONDS
  show "${describe[@]}"
  while true; do
    state=$(queued_state)
    case $state in
      ACTIVE) echo "Queued resource $QUEUED_RESOURCE is ACTIVE."; return ;;
      FAILED | SUSPENDED | SUSPENDING) die "queued resource $QUEUED_RESOURCE is $state; see: $(quote_all "${describe[@]:0:7}")" ;;
    esac
    if ((SECONDS - start >= QUEUE_TIMEOUT)); then
      die "timed out after ${QUEUE_TIMEOUT}s waiting for queued resource $QUEUED_RESOURCE to become ACTIVE (last state: ${state:-unknown}); it stays queued: re-run the same command to keep waiting, or delete it with: $(quote_all gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" "${GCLOUD_LOCATION[@]}" --force)"
    fi
    echo "Queued resource $QUEUED_RESOURCE: ${state:-not visible yet}; checking again in ${POLL_SECONDS}s."
    sleep "$POLL_SECONDS" &
    wait "$!" # unlike a foreground sleep, lets a signal's trap run at once
  done
}

count_workers() {
  if [[ -n $NUM_WORKERS ]]; then
    return
  fi
  local describe=(gcloud compute tpus tpu-vm describe "$TPU" "${GCLOUD_LOCATION[@]}" --format='value(networkEndpoints.len())')
  if ((DRY_RUN)); then
    show "${describe[@]}"
    NUM_WORKERS=$(workers_for_accelerator "$ACCELERATOR")
    [[ -n $NUM_WORKERS ]] || usage_error "--num_workers is needed for --dry_run with accelerator '$ACCELERATOR'"
    note "$NUM_WORKERS workers, from the accelerator type $ACCELERATOR (a real run counts them with the describe above)"
    return
  fi
  show "${describe[@]}"
  NUM_WORKERS=$("${describe[@]}") || die "cannot describe TPU $TPU in zone $ZONE of project $PROJECT (does it exist? --create=... makes it)"
  [[ $NUM_WORKERS =~ ^[1-9][0-9]*$ ]] || die "TPU $TPU has no network endpoints yet (describe gave '$NUM_WORKERS')"
  echo "TPU $TPU has $NUM_WORKERS workers."
}

# The working tree as it is (tracked files, with their uncommitted changes, and untracked files that
# are not ignored), without files deleted but not yet committed and without default log folders.
make_tarball() {
  local tarball=$1
  if ((DRY_RUN)); then
    echo "+ git -C $(quote_all "$ROOT") ls-files -z --cached --others --exclude-standard | tar -C $(quote_all "$ROOT") --null -T - -czf $(quote_all "$tarball")"
    return
  fi
  echo "Packing the working tree of $ROOT"
  local path
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' path; do
      if [[ $path != tpu_logs/* ]] && [[ -e $ROOT/$path || -L $ROOT/$path ]]; then
        printf '%s\0' "$path"
      fi
    done |
    COPYFILE_DISABLE=1 tar -C "$ROOT" --null -T - -czf "$tarball"
}

WORKER_PIDS=()
INTERRUPTED=0
DELETE_ARMED=0
TMP_DIR=""
SSH_FLAGS=()
DELETE=()
# shellcheck disable=SC2016 # expanded on the worker, not here
STOP_COMMAND='pid=$(cat ~/ia-jax.pid 2>/dev/null) && grep -qs ia-jax-venv "/proc/$pid/cmdline" && kill -TERM "$pid"; true'

# shellcheck disable=SC2329 # invoked by the traps set in main
on_signal() {
  local status=$1
  trap - INT TERM
  INTERRUPTED=1
  echo >&2
  echo "tpu_run.sh: interrupted." >&2
  if ((${#WORKER_PIDS[@]})); then
    echo "Sending SIGTERM to the entry point on every worker (it saves a checkpoint, then exits)." >&2
    run gcloud compute tpus tpu-vm ssh "$TPU" --worker=all "${SSH_FLAGS[@]}" --command="$STOP_COMMAND" </dev/null || true
    local pid
    for pid in "${WORKER_PIDS[@]}"; do
      kill -TERM -- "-$pid" 2>/dev/null || true
    done
    echo "Logs: $LOGS. Re-running the same command resumes from the last checkpoint." >&2
  fi
  exit "$status"
}

# shellcheck disable=SC2329 # invoked by the trap set in main
on_exit() {
  local status=$?
  if [[ -n $TMP_DIR ]]; then
    rm -rf "$TMP_DIR"
  fi
  if ((DELETE_AFTER && DELETE_ARMED)); then
    if ((INTERRUPTED)); then
      echo "Not deleting $TPU after an interrupt (the workers may still be saving a checkpoint); delete it with:" >&2
      echo "  $(quote_all "${DELETE[@]}")" >&2
    else
      run "${DELETE[@]}" || echo "tpu_run.sh: deleting failed; delete it yourself: $(quote_all "${DELETE[@]}")" >&2
    fi
  fi
  exit "$status"
}

# Runs the entry point on every worker, prints a summary and sets RUN_STATUS.
RUN_STATUS=0
run_workers() {
  local run_command
  run_command="cd ~/ia-jax || exit 1; if pid=\$(cat ~/ia-jax.pid 2>/dev/null) && grep -qs ia-jax-venv \"/proc/\$pid/cmdline\"; then echo \"tpu_run: an earlier run (pid \$pid) is still running on this worker; stop it first\" >&2; exit 1; fi; echo \$\$ > ~/ia-jax.pid; export PYTHONUNBUFFERED=1; exec ~/ia-jax-venv/bin/python -m $(quote_all "$ENTRY" "--config=$CONFIG" ${ENTRY_ARGS[@]+"${ENTRY_ARGS[@]}"})"
  local worker log command
  if ((!DRY_RUN)); then
    mkdir -p "$LOGS"
    quote_all "$0" ${ORIGINAL_ARGS[@]+"${ORIGINAL_ARGS[@]}"} >"$LOGS/command.txt"
    echo >>"$LOGS/command.txt"
    echo "Starting $ENTRY on $NUM_WORKERS workers; logs in $LOGS/worker-N.log (worker 0 is shown here)."
  fi
  # One ssh per worker rather than one `ssh --worker=all`: that interleaves the workers' output and
  # returns only the first failing status in worker order, so a preempted worker (75) could be hidden.
  set -m # each worker's ssh in its own process group, so that an interrupt can stop all of it
  for ((worker = 0; worker < NUM_WORKERS; worker++)); do
    log="$LOGS/worker-$worker.log"
    command=(gcloud compute tpus tpu-vm ssh "$TPU" --worker="$worker" "${SSH_FLAGS[@]}" --command="$run_command")
    echo "+ $(quote_all "${command[@]}") > $(quote_all "$log") 2>&1 &"
    if ((DRY_RUN)); then
      continue
    fi
    if ((worker == 0)); then
      ("${command[@]}" </dev/null 2>&1 | tee "$log"; exit "${PIPESTATUS[0]}") &
    else
      "${command[@]}" </dev/null >"$log" 2>&1 &
    fi
    WORKER_PIDS+=("$!")
  done
  set +m
  if ((DRY_RUN)); then
    note "on Ctrl-C or SIGTERM: $(quote_all gcloud compute tpus tpu-vm ssh "$TPU" --worker=all "${SSH_FLAGS[@]}" --command="$STOP_COMMAND")"
    return
  fi

  local codes=() status
  for ((worker = 0; worker < NUM_WORKERS; worker++)); do
    status=0
    wait "${WORKER_PIDS[$worker]}" || status=$?
    codes+=("$status")
  done
  WORKER_PIDS=()
  summarize "${codes[@]}" | tee "$LOGS/summary.txt"
  RUN_STATUS=$(final_status "${codes[@]}")
}

final_status() {
  local code first_failure=0
  for code in "$@"; do
    if ((code == PREEMPTED_STATUS)); then
      echo "$PREEMPTED_STATUS"
      return
    fi
    if ((code != 0 && first_failure == 0)); then
      first_failure=$code
    fi
  done
  echo "$first_failure"
}

summarize() {
  local codes=("$@") worker failing=() preempted=0
  echo
  printf '%-8s %-6s %s\n' worker status log
  for ((worker = 0; worker < ${#codes[@]}; worker++)); do
    printf '%-8s %-6s %s\n' "$worker" "${codes[$worker]}" "$LOGS/worker-$worker.log"
    if ((codes[worker] != 0)); then
      failing+=("$worker")
    fi
    if ((codes[worker] == PREEMPTED_STATUS)); then
      preempted=1
    fi
  done
  if ((${#failing[@]} == 0)); then
    echo "All $NUM_WORKERS workers exited 0."
    return
  fi
  local shown=0
  for worker in "${failing[@]}"; do
    if ((shown == MAX_TAILS)); then
      echo
      echo "(and $((${#failing[@]} - MAX_TAILS)) more failing workers: see their logs)"
      break
    fi
    echo
    echo "--- worker $worker exited ${codes[$worker]}; last lines of $LOGS/worker-$worker.log:"
    tail -n "$TAIL_LINES" "$LOGS/worker-$worker.log" || true
    shown=$((shown + 1))
  done
  echo
  if ((preempted)); then
    echo "The run was preempted: a worker exited $PREEMPTED_STATUS after saving a checkpoint."
    echo "Re-run the same command to resume from it:"
    echo "  $(cat "$LOGS/command.txt")"
    if ((DELETE_AFTER)) && [[ $CREATE == none ]]; then
      echo "(--delete_after deletes the TPU: add --create=... to get a new one.)"
    fi
  else
    echo "Failing workers: ${failing[*]}."
  fi
  for worker in "${failing[@]}"; do
    if ((codes[worker] == 255)); then
      echo "(255: ssh lost the worker or could not reach it. If the TPU was preempted, re-running the same command resumes from the last checkpoint.)"
      break
    fi
  done
}

main() {
  ORIGINAL_ARGS=("$@")
  parse_flags "$@"
  check_flags

  local script_dir
  script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  ROOT=$(git -C "$script_dir" rev-parse --show-toplevel 2>/dev/null) ||
    die "$script_dir is not in a git checkout: the working tree to ship is found with git"
  [[ -f $ROOT/${CONFIG%%:*} ]] || usage_error "--config: no file ${CONFIG%%:*} in $ROOT (give the path relative to the repository root)"

  LOGS=${LOGS:-./tpu_logs/$TPU-$(date +%Y%m%d-%H%M%S)}
  GCLOUD_LOCATION=(--zone="$ZONE" --project="$PROJECT")
  QUEUED_RESOURCE=$TPU-qr
  SSH_FLAGS=("${GCLOUD_LOCATION[@]}" --quiet --strict-host-key-checking=no)
  if [[ $CREATE == queued ]]; then
    DELETE=(gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" "${GCLOUD_LOCATION[@]}" --force --quiet)
  else
    DELETE=(gcloud compute tpus tpu-vm delete "$TPU" "${GCLOUD_LOCATION[@]}" --quiet)
  fi

  trap on_exit EXIT
  trap 'on_signal 130' INT
  trap 'on_signal 143' TERM
  if ((DRY_RUN)); then
    note "dry run: nothing below is run"
  fi

  DELETE_ARMED=1
  case $CREATE in
    on-demand | spot) create_tpu ;;
    queued) create_queued ;;
  esac
  count_workers

  local tarball=${TMPDIR:-/tmp}/tpu_run.XXXXXX/ia_jax_src.tar.gz
  if ((!DRY_RUN)); then
    TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tpu_run.XXXXXX")
    tarball=$TMP_DIR/ia_jax_src.tar.gz
  fi
  make_tarball "$tarball" || die "packing the working tree of $ROOT failed"
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU:ia_jax_src.tar.gz" --worker=all "${SSH_FLAGS[@]}" ||
    die "copying the package to the workers failed"

  local install
  install="set -e; rm -rf ~/ia-jax; mkdir ~/ia-jax; tar -xzf ~/ia_jax_src.tar.gz -C ~/ia-jax; export PATH=\"\$HOME/.local/bin:\$PATH\"; command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | env UV_NO_MODIFY_PATH=1 sh; [ -x ~/ia-jax-venv/bin/python ] || uv venv --python $REMOTE_PYTHON ~/ia-jax-venv; uv pip install --python ~/ia-jax-venv/bin/python -e \"\$HOME/ia-jax[tpu]\""
  if ((DRY_RUN)); then
    show gcloud compute tpus tpu-vm ssh "$TPU" --worker=all "${SSH_FLAGS[@]}" --command="$install"
  else
    mkdir -p "$LOGS"
    show gcloud compute tpus tpu-vm ssh "$TPU" --worker=all "${SSH_FLAGS[@]}" --command="$install"
    gcloud compute tpus tpu-vm ssh "$TPU" --worker=all "${SSH_FLAGS[@]}" --command="$install" </dev/null 2>&1 |
      tee "$LOGS/install.log" || die "installing on the workers failed; see $LOGS/install.log"
  fi

  run_workers
  exit "$RUN_STATUS"
}

main "$@"
