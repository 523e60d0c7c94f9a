# Shared by scripts/demo and scripts/test: make (or reuse) a virtual environment with the
# project installed. Usage: make_env DIR "extra pip requirements..."
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"

make_env() {
  local dir="$1"; shift
  if [ ! -x "$dir/bin/python" ]; then
    "$PY" -m venv "$dir"
  fi
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[dev]" "$@"
}
