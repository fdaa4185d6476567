"""Rules a resource must also meet to run on a cluster (on top of the API model's rules).

The API models accept everything the in-process runner can do. A few things only make sense on
one machine: the embedded store (``store://``) lives in ``~/.scoreops`` of whoever runs it, so a
pod would write its results into its own container and lose them; and the operator can only
follow a run whose output it can read, i.e. ``s3://``. Names must leave room for the suffixes
the training operator and KServe append (pod and Service names are DNS labels, 63 characters).
"""

from __future__ import annotations

from scoreops.api import FieldError, Resource
from scoreops.k8s.kinds import spec_of
from scoreops.k8s.rules import DNS_LABEL_MAX

__all__ = ["DNS_LABEL_MAX", "cluster_errors"]


def cluster_errors(resource: Resource) -> list[FieldError]:
    """Problems that keep ``resource`` from running on a cluster; empty when it can (each
    kind's rules are in its module of :mod:`scoreops.k8s.kinds`)."""
    return spec_of(resource).cluster_errors(resource)
