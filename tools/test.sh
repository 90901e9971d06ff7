#!/usr/bin/env bash
# The project's test command (see README): unit tests of dsmlib, the book build and the real-browser
# test, then strict nbval over every notebook, twice in a row (the second pass proves the committed
# outputs are reproducible run after run, not just once). Works from a new shell: it activates the
# repository's .venv when no virtual environment is active. Prints the time of each phase; every
# phase runs even when an earlier one failed, and the exit status says whether all passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    . .venv/bin/activate
fi
start=$SECONDS
status=0
python -m pytest tests -q -p no:cacheprovider || status=1
echo "unit tests, book build and browser test: $(( SECONDS - start )) s"
# The notebook kernels get the same environment as tools/execute_notebooks.py gave them when the
# stored outputs were made, so fresh outputs can be compared with them. Two workers, one notebook
# per worker at a time (--dist loadfile keeps all cells of a notebook on one kernel).
NBVAL_ENV=(PYTHONHASHSEED=0 TQDM_DISABLE=1 MPLBACKEND=module://matplotlib_inline.backend_inline)
NBVAL=(--nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
       -p no:cacheprovider -n "${NBVAL_WORKERS:-2}" --dist loadfile)
for pass in 1 2; do
    echo "strict nbval, pass $pass of 2"
    t0=$SECONDS
    env "${NBVAL_ENV[@]}" python -m pytest "${NBVAL[@]}" book -q || status=1
    echo "strict nbval, pass $pass: $(( SECONDS - t0 )) s"
done
echo "tools/test.sh: $(( SECONDS - start )) s in all, $([[ $status == 0 ]] && echo passed || echo FAILED)"
exit $status
