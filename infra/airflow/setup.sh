#!/usr/bin/env bash
# Create or update .venv-airflow, Airflow's own virtual environment, from
# infra/airflow/requirements.lock. Idempotent: a second call with an unchanged
# lock returns at once. Needs the project's .venv (for uv) and Python 3.11.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv-airflow"
LOCK="$ROOT/infra/airflow/requirements.lock"
UV="$ROOT/.venv/bin/uv"
STAMP="$VENV/.installed"
export DO_NOT_TRACK=1 SCARF_ANALYTICS=false AIRFLOW__CORE__LOAD_EXAMPLES=False

if [ ! -x "$UV" ]; then
  echo "setup.sh: $UV not found: run 'make setup' first (it creates .venv with uv)" >&2
  exit 2
fi
if [ ! -f "$LOCK" ]; then
  "$UV" pip compile --quiet "$ROOT/infra/airflow/requirements.in" -p 3.11 -o "$LOCK"
fi
want="$(sha256sum "$LOCK" | cut -d' ' -f1)"
if [ -x "$VENV/bin/airflow" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0  # up to date
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$UV" venv --quiet --python "$(command -v python3.11 || command -v python3)" "$VENV"
fi
VIRTUAL_ENV="$VENV" "$UV" pip sync --quiet --compile-bytecode "$LOCK"
echo "$want" > "$STAMP"
echo "setup.sh: Airflow installed in $VENV ($("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("apache-airflow"))'))"
