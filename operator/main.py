"""The scoreops operator: kopf registrations only; the handlers live in handlers/.

Run: ``kopf run --standalone --liveness=http://0.0.0.0:8080/healthz --all-namespaces
/opt/scoreops/operator/main.py``. This directory is not a package (``operator`` is a stdlib
module name): it puts itself on ``sys.path`` and imports ``handlers``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kopf

from handlers import common, correctorservice, evalsuite, scorerun

GROUP, VERSION = "scoreops.io", "v1alpha1"
MANAGED = {"app.kubernetes.io/managed-by": "scoreops"}
CLEANUP = {common.DELETE_OUTPUT_ANNOTATION: "true"}

kopf.on.startup()(common.configure)
kopf.on.login()(common.login)
kopf.on.cleanup()(common.shutdown)

# Our resources and their children's status, kept in memory from one watch per kind: the
# operator-wide status sync (started by common.configure) reads them, no GET per sync.
kopf.index(GROUP, VERSION, "scoreruns", id="scoreruns")(common.index_resource)
kopf.index(GROUP, VERSION, "evalsuites", id="evalsuites")(common.index_resource)
kopf.index(GROUP, VERSION, "correctorservices", id="correctorservices")(common.index_resource)
kopf.index("kubeflow.org", "v1", "pytorchjobs", labels=MANAGED, id="pytorchjobs")(
    common.index_child)
kopf.index("batch", "v1", "jobs", labels=MANAGED, id="jobs")(common.index_child)
kopf.index("serving.kserve.io", "v1beta1", "inferenceservices", labels=MANAGED,
           id="inferenceservices")(common.index_child)

# ScoreRun
kopf.on.create(GROUP, VERSION, "scoreruns", id="scorerun-create", backoff=2)(scorerun.reconcile)
kopf.on.resume(GROUP, VERSION, "scoreruns", id="scorerun-resume", backoff=2)(scorerun.reconcile)
kopf.on.update(GROUP, VERSION, "scoreruns", field="spec", id="scorerun-update", backoff=2)(
    scorerun.spec_changed)
kopf.on.delete(GROUP, VERSION, "scoreruns", annotations=CLEANUP, id="scorerun-delete-output")(
    common.delete_output)

# EvalSuite
kopf.on.create(GROUP, VERSION, "evalsuites", id="evalsuite-create", backoff=2)(
    evalsuite.reconcile)
kopf.on.resume(GROUP, VERSION, "evalsuites", id="evalsuite-resume", backoff=2)(
    evalsuite.reconcile)
kopf.on.update(GROUP, VERSION, "evalsuites", field="spec", id="evalsuite-update", backoff=2)(
    evalsuite.spec_changed)
kopf.on.delete(GROUP, VERSION, "evalsuites", annotations=CLEANUP, id="evalsuite-delete-output")(
    common.delete_output)

# CorrectorService (a spec change rolls out through KServe: reconciled, not refused)
kopf.on.create(GROUP, VERSION, "correctorservices", id="correctorservice-create", backoff=2)(
    correctorservice.reconcile)
kopf.on.resume(GROUP, VERSION, "correctorservices", id="correctorservice-resume", backoff=2)(
    correctorservice.reconcile)
kopf.on.update(GROUP, VERSION, "correctorservices", field="spec", id="correctorservice-update",
               backoff=2)(correctorservice.reconcile)
