"""Rules a resource must also meet to run on a cluster (on top of the API model's rules).

The API models accept everything the in-process runner can do. A few things only make sense on
one machine: the embedded store (``store://``) lives in ``~/.scoreops`` of whoever runs it, so a
pod would write its results into its own container and lose them; and the operator can only
follow a run whose output it can read, i.e. ``s3://``. Names must leave room for the suffixes
the training operator and KServe append (pod and Service names are DNS labels, 63 characters).
"""

from __future__ import annotations

from scoreops.api import CorrectorService, EvalSuite, FieldError, Resource, ScoreRun
from scoreops.k8s.config import eval_job_name, inference_service_name, train_job_name

DNS_LABEL_MAX = 63

_LOCAL_ONLY = (
    "store:// is the embedded store of one machine; pods cannot reach it, use s3://"
)


def _not_local(uri: str | None, field: str, errors: list[FieldError]) -> None:
    if uri is not None and uri.startswith("store://"):
        errors.append(FieldError(field, f"{uri!r}: {_LOCAL_ONLY}"))


def _s3_output(uri: str, field: str, errors: list[FieldError]) -> None:
    if not uri.startswith("s3://"):
        errors.append(FieldError(
            field,
            f"{uri!r}: on a cluster the output must be s3://bucket/prefix (pods write there "
            "and the operator reads progress from there)",
        ))


def _name_fits(name: str, longest_suffix: str, errors: list[FieldError]) -> None:
    longest = name + longest_suffix
    if len(longest) > DNS_LABEL_MAX:
        errors.append(FieldError(
            "metadata.name",
            f"{name!r} is too long: child object {longest!r} would exceed {DNS_LABEL_MAX} "
            f"characters; use at most {DNS_LABEL_MAX - len(longest_suffix)}",
        ))


def cluster_errors(resource: Resource) -> list[FieldError]:
    """Problems that keep ``resource`` from running on a cluster; empty when it can."""
    errors: list[FieldError] = []
    name = resource.metadata.name
    if isinstance(resource, ScoreRun):
        spec = resource.spec
        _s3_output(spec.output.uri, "spec.output.uri", errors)
        _not_local(spec.model.uri, "spec.model.uri", errors)
        _not_local(spec.dataset.train.uri, "spec.dataset.train.uri", errors)
        if spec.dataset.eval is not None:
            _not_local(spec.dataset.eval.uri, "spec.dataset.eval.uri", errors)
        workers = spec.resources.workers
        role = f"-worker-{workers - 2}" if workers > 1 else "-master-0"
        _name_fits(name, train_job_name("") + role, errors)
    elif isinstance(resource, EvalSuite):
        spec = resource.spec
        _s3_output(spec.output.uri, "spec.output.uri", errors)
        _not_local(spec.data_root, "spec.dataRoot", errors)
        for i, model in enumerate(spec.models):
            _not_local(model.uri, f"spec.models[{i}].uri", errors)
        if spec.strategy.reward_model is not None:
            _not_local(spec.strategy.reward_model, "spec.strategy.rewardModel", errors)
        if spec.resources.workers != 1:
            errors.append(FieldError(
                "spec.resources.workers",
                "an EvalSuite runs as one pod (vLLM in-process); set workers to 1",
            ))
        _name_fits(name, eval_job_name("") + "-master-0", errors)
    elif isinstance(resource, CorrectorService):
        uri = resource.spec.model.uri
        if uri is not None and not uri.startswith("s3://"):
            errors.append(FieldError(
                "spec.model.uri",
                f"{uri!r}: KServe's storage initializer fetches the weights; give s3://",
            ))
        _name_fits(inference_service_name(name), "-transformer", errors)
    return errors
