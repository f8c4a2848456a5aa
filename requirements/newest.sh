#!/usr/bin/env bash
# Run the suite against the newest versions that setup.py allows, in a fresh virtual environment,
# and, with --write-lock, record them in requirements/lock.txt once the suite has passed.
#
#   bash requirements/newest.sh               # install the newest allowed versions, ruff, tests
#   bash requirements/newest.sh --write-lock  # the same, then rewrite requirements/lock.txt
#
# Extra arguments after the flag go to pytest (e.g. -m "not slow"). CI installs from the lock
# (README's test command), so an upstream release changes nothing until someone runs this,
# reads the result and commits the new lock: upper bounds are raised deliberately.
set -euo pipefail
cd "$(dirname "$0")/.."
write_lock=0
if [[ "${1:-}" == "--write-lock" ]]; then
  write_lock=1
  shift
fi
venv="${GIFTJAX_NEWEST_VENV:-$(mktemp -d)/venv}"
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
pip install -q --upgrade --upgrade-strategy eager -e ".[test]"
echo "newest allowed versions installed in $venv:"
pip freeze --exclude-editable | grep -i -E '^(jax|jaxlib|flax|optax|orbax-checkpoint|transformers|kernels|grain|qwix|torch)=='
ruff check .
pytest -q -n 2 tests "$@"
if [[ "$write_lock" == 1 ]]; then
  {
    echo "# Exact versions CI installs (pip's -c constraints), Python 3.11 on Linux x86_64."
    echo "# Written by \`bash requirements/newest.sh --write-lock\` after the suite passed on them."
    pip freeze --exclude-editable
  } > requirements/lock.txt
  echo "requirements/lock.txt rewritten ($(grep -c '==' requirements/lock.txt) pins)"
fi
