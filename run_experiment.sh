#!/usr/bin/env bash
# Thin wrapper: ./run_experiment.sh --config <recipe> [--force] [--use_wandb] [--resume-from PATH] [flags]
# Outputs go to ./checkpoints and ./results of the current folder.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -x "$here/.venv/bin/fastzhang" ]; then
    exec "$here/.venv/bin/fastzhang" run "$@"
fi
exec fastzhang run "$@"
