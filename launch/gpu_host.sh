#!/usr/bin/env bash
# Runs diffusion_distillation on this machine's NVIDIA GPUs: one process that
# drives all local GPUs through jit over a device mesh (no --distributed).
#
# One process per GPU (--distributed with --num_processes/--process_id) would
# also work, but on one host it only adds a coordinator, a data share and a
# Python runtime per GPU, and every process but 0 compiles every step anew
# (JAX reads its persistent compilation cache on process 0 only); it pays off
# only across hosts.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu_host.sh --workdir=DIR [options] [-- MAIN_FLAGS...]

Trains and distills on all local NVIDIA GPUs in one process; rerunning the
same command resumes. Creates the virtual environment (with the CUDA build of
JAX) when it is missing.

Required:
  --workdir=DIR   local directory or gs://BUCKET/DIR

Options [default]:
  --config=FILE   config file [configs/cifar10.py]
  --mode=MODE     main.py --mode [all]
  --venv=DIR      virtual environment [.venv-gpu]
  --gpus=LIST     CUDA_VISIBLE_DEVICES, e.g. 0,1 [all]
  -h, --help      show this help

Flags after -- go to main.py, e.g. -- --config.train.batch_size=256.
The batch sizes must be multiples of the number of GPUs.
EOF
}

die() {
  echo "error: $*" >&2
  exit 2
}

workdir=""
config="configs/cifar10.py"
mode="all"
venv=".venv-gpu"
gpus=""
main_flags=()

while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --workdir=*) workdir="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --mode=*) mode="${1#*=}" ;;
    --venv=*) venv="${1#*=}" ;;
    --gpus=*) gpus="${1#*=}" ;;
    --) shift; main_flags=("$@"); break ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

[[ -n "$workdir" ]] || die "missing --workdir=DIR (local or gs://BUCKET/DIR)"
cd "$(dirname "$0")/.."
[[ -f setup.py && -f "$config" ]] ||
  die "run from a diffusion_distillation checkout with $config in it"
command -v nvidia-smi >/dev/null ||
  die "nvidia-smi not found: this script needs an NVIDIA GPU host"
if [[ -n "$gpus" ]]; then
  export CUDA_VISIBLE_DEVICES="$gpus"
fi

if [[ ! -x "$venv/bin/python" ]]; then
  python3.11 -m venv "$venv"
  "$venv/bin/pip" install -e . 'jax[cuda12]==0.10.2'
fi
"$venv/bin/python" -c 'import jax; print("GPUs:", jax.devices("gpu"))'
exec "$venv/bin/python" -m diffusion_distillation.main "--config=$config" \
  "--workdir=$workdir" "--mode=$mode" "${main_flags[@]}"
