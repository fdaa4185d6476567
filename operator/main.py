"""The scoreops operator: kopf registrations only; the handlers live in handlers/.

Run: ``kopf run --standalone --liveness=http://0.0.0.0:8080/healthz --all-namespaces
/opt/scoreops/operator/main.py``. This directory is not a package (``operator`` is a stdlib
module name): it puts itself on ``sys.path`` and imports ``handlers``.

Every kind of ``scoreops.k8s.kinds`` gets the same handlers (``handlers/resource.py``); what
differs between kinds is in their specs (a spec change is refused once a job-backed kind's
children exist, and rolls out for the others; only kinds with an output can delete it).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kopf

from handlers import common, resource
from scoreops.api.base import GROUP, VERSION
from scoreops.k8s.kinds import KINDS

MANAGED = {"app.kubernetes.io/managed-by": "scoreops"}
CLEANUP = {common.DELETE_OUTPUT_ANNOTATION: "true"}

kopf.on.startup()(common.configure)
kopf.on.login()(common.login)
kopf.on.cleanup()(common.shutdown)

# Our resources and their children's status, kept in memory from one watch per kind: the
# operator-wide status sync (started by common.configure) reads them, no GET per sync.
for spec in KINDS.values():
    kopf.index(GROUP, VERSION, spec.plural, id=spec.plural)(common.index_resource)
kopf.index("kubeflow.org", "v1", "pytorchjobs", labels=MANAGED, id="pytorchjobs")(
    common.index_child)
kopf.index("batch", "v1", "jobs", labels=MANAGED, id="jobs")(common.index_child)
kopf.index("serving.kserve.io", "v1beta1", "inferenceservices", labels=MANAGED,
           id="inferenceservices")(common.index_child)

# The handler ids (<kind>-create, ...) name kopf's progress annotations: they stay stable.
for spec in KINDS.values():
    key = spec.name.lower()
    kopf.on.create(GROUP, VERSION, spec.plural, id=f"{key}-create", backoff=2)(
        resource.reconcile)
    kopf.on.resume(GROUP, VERSION, spec.plural, id=f"{key}-resume", backoff=2)(
        resource.reconcile)
    kopf.on.update(GROUP, VERSION, spec.plural, field="spec", id=f"{key}-update", backoff=2)(
        resource.spec_changed)
    if spec.has_output:
        kopf.on.delete(GROUP, VERSION, spec.plural, annotations=CLEANUP,
                       id=f"{key}-delete-output")(resource.delete_output)
