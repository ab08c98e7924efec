#!/usr/bin/env bash
# Runs diffusion_distillation on a Cloud TPU VM slice: every worker runs the
# same `python -m diffusion_distillation.main --distributed` (JAX finds the
# other workers itself) on one gs:// workdir, so a rerun resumes the run.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND --project=PROJECT --zone=ZONE --bucket=gs://BUCKET
                        [options] [-- MAIN_FLAGS...]

Commands:
  run     create the slice (or reuse it), copy this checkout to every worker
          and install it there, start main.py on all workers, stream worker
          0's log (Ctrl-C stops the streaming, not the run)
  logs    stream worker 0's log of the current run
  delete  delete the slice

Required:
  --project=PROJECT     Google Cloud project
  --zone=ZONE           zone of the slice, e.g. us-central2-b
  --bucket=gs://BUCKET  holds the workdir, gs://BUCKET/RUN

Options [default]:
  --name=NAME           slice name [dd-tpu]
  --accelerator=TYPE    TPU type [v4-8]
  --version=VERSION     TPU VM software version [tpu-ubuntu2204-base]
  --spot                create a Spot slice
  --config=FILE         config file [configs/cifar10.py]
  --run=NAME            workdir gs://BUCKET/NAME [cifar10]
  --mode=MODE           main.py --mode [all]
  -h, --help            show this help

Flags after -- go to main.py, e.g.
  -- --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
Rerunning `run` with the same --run resumes, on a slice created again if it
was preempted; a run still going is refused. A run stopped by SIGTERM (a
preemption) saves a checkpoint first and exits with status 143.
EOF
}

die() {
  echo "error: $*" >&2
  exit 2
}

command=""
project=""
zone=""
bucket=""
name="dd-tpu"
accelerator="v4-8"
version="tpu-ubuntu2204-base"
spot=()
config="configs/cifar10.py"
run="cifar10"
mode="all"
main_flags=()

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --project=*) project="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --bucket=*) bucket="${1#*=}" ;;
    --name=*) name="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --spot) spot=(--spot) ;;
    --config=*) config="${1#*=}" ;;
    --run=*) run="${1#*=}" ;;
    --mode=*) mode="${1#*=}" ;;
    --) shift; main_flags=("$@"); break ;;
    run | logs | delete)
      [[ -z "$command" ]] || die "one command only, got '$command' and '$1'"
      command="$1" ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

[[ -n "$command" ]] || die "missing COMMAND: run, logs or delete (see --help)"
[[ -n "$project" ]] || die "missing --project=PROJECT"
[[ -n "$zone" ]] || die "missing --zone=ZONE"
[[ -n "$bucket" ]] || die "missing --bucket=gs://BUCKET"
[[ "$bucket" == gs://* ]] || die "--bucket must start with gs://, got '$bucket'"
bucket="${bucket%/}"
cd "$(dirname "$0")/.."
[[ -f setup.py && -f "$config" ]] ||
  die "run from a diffusion_distillation checkout with $config in it"
command -v gcloud >/dev/null ||
  die "gcloud not found: install the Google Cloud CLI"

tpu=(gcloud compute tpus tpu-vm)
where=(--project="$project" --zone="$zone")
remote_dir="diffusion_distillation"  # in each worker's home

stream_log() {
  "${tpu[@]}" ssh "$name" "${where[@]}" --worker=0 \
    --command="tail -n +1 -F $remote_dir/run.log"
}

case "$command" in
  delete)
    "${tpu[@]}" delete "$name" "${where[@]}" --quiet
    exit 0 ;;
  logs)
    stream_log
    exit 0 ;;
esac

workdir="$bucket/$run"
create_slice() {
  "${tpu[@]}" create "$name" "${where[@]}" --accelerator-type="$accelerator" \
    --version="$version" "${spot[@]}"
}
# A preempted Spot slice stays, stopped, in state PREEMPTED: it is deleted
# and created again, and the run resumes from its workdir (main.py saved a
# checkpoint on the preemption's SIGTERM).
if state="$("${tpu[@]}" describe "$name" "${where[@]}" \
  --format='value(state)' 2>/dev/null)"; then
  if [[ "$state" == PREEMPTED || "$state" == TERMINATED ]]; then
    echo "TPU VM $name was preempted ($state): creating it again; the run" \
      "resumes from $workdir"
    "${tpu[@]}" delete "$name" "${where[@]}" --quiet
    create_slice
  else
    echo "Reusing TPU VM $name"
  fi
else
  create_slice
fi

# The checkout as it is (tracked and untracked files, not ignored ones), so
# the workers run exactly this code.
archive="$(mktemp "${TMPDIR:-/tmp}/dd_checkout.XXXXXX")"
trap 'rm -f "$archive"' EXIT
git ls-files -z --cached --others --exclude-standard |
  tar --null -T - -czf "$archive"
"${tpu[@]}" scp "$archive" "$name:dd_checkout.tar.gz" "${where[@]}" \
  --worker=all
# Not while a run is going. The TPU VM image has Python 3.10; the pinned
# set needs 3.11.
"${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="set -e
if [ -f $remote_dir/run.pid ] && kill -0 \"\$(cat $remote_dir/run.pid)\" 2>/dev/null
then
  echo 'error: a run is still going on this worker (see run.log)' >&2; exit 1
fi
command -v python3.11 >/dev/null || {
  sudo apt-get update -q && sudo apt-get install -y -q python3.11 python3.11-venv
}
mkdir -p $remote_dir && tar -xzf dd_checkout.tar.gz -C $remote_dir
cd $remote_dir
[ -d .venv ] || python3.11 -m venv .venv
.venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'"

main=(.venv/bin/python -m diffusion_distillation.main --distributed
  "--config=$config" "--workdir=$workdir" "--mode=$mode" "${main_flags[@]}")
printf -v main_line '%q ' "${main[@]}"
"${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="set -e
cd $remote_dir
nohup $main_line >run.log 2>&1 </dev/null &
echo \$! >run.pid"
echo "Started on every worker of $name; workdir $workdir"
stream_log
