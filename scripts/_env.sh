# Sourced by the scripts: make .venv once and keep it in step with pyproject.toml.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing edge-outbox and its test tools into .venv ..." >&2
  python -m pip install -q --disable-pip-version-check --upgrade pip >&2
  python -m pip install -q --disable-pip-version-check -e ".[test]" >&2
  touch "$stamp"
fi
