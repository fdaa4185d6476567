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

echo "== pytest"
set +e
python -m pytest tests -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi
exit "$rc"
