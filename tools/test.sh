#!/usr/bin/env bash
# The project's test command (see README): unit tests of dsmlib, the book build and the real-browser
# test, then strict nbval over every notebook, twice in a row (the second pass proves the committed
# outputs are reproducible run after run, not just once).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest tests -q -p no:cacheprovider
# The notebook kernels get the same environment as tools/execute_notebooks.py gave them when the
# stored outputs were made, so fresh outputs can be compared with them.
NBVAL_ENV=(PYTHONHASHSEED=0 TQDM_DISABLE=1 MPLBACKEND=module://matplotlib_inline.backend_inline)
NBVAL=(--nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider)
for pass in 1 2; do
    echo "strict nbval, pass $pass of 2"
    env "${NBVAL_ENV[@]}" python -m pytest "${NBVAL[@]}" book -q
done
