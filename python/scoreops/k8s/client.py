"""A small asynchronous Kubernetes API client for the few calls the operator makes.

The operator runs inside kopf's event loop, so its writes are ``aiohttp`` requests on the same
loop (no thread pool, no second client library in memory). It knows the kinds the operator
touches, and three verbs: GET, server-side apply (one field manager, conflicts forced: the
operator owns its children) and JSON merge patch (optionally guarded by a resourceVersion).

Credentials come from kopf's :class:`kopf.ConnectionInfo` (service account in a pod, the
kubeconfig elsewhere); a service-account token is re-read from its file when it rotates.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scoreops.api.base import API_VERSION
from scoreops.api.crd import CRD_KINDS
from scoreops.k8s.config import FIELD_MANAGER

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        parts = [base]
        if self.namespaced:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


KINDS: dict[tuple[str, str], Kind] = {
    (k.api_version, k.kind): k for k in (
        Kind("v1", "ConfigMap", "configmaps"),
        Kind("v1", "ServiceAccount", "serviceaccounts"),
        Kind("batch/v1", "Job", "jobs"),
        Kind("kubeflow.org/v1", "PyTorchJob", "pytorchjobs"),
        Kind("serving.kserve.io/v1beta1", "InferenceService", "inferenceservices"),
        # our own kinds, from the table the CRDs are generated from
        *(Kind(API_VERSION, kind, str(crd["plural"])) for kind, crd in CRD_KINDS.items()),
    )
}


def kind_of(api_version: str, kind: str) -> Kind:
    try:
        return KINDS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator's client does not know {api_version} {kind}") from None


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str, body: Any = None) -> None:
        self.status, self.reason, self.body = status, reason, body
        super().__init__(f"{status} {reason}: {message}")

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404


class KubeClient:
    """GET / apply / merge-patch against one API server.

    ``ssl`` is an :class:`ssl.SSLContext` (or False to skip verification); ``token_file``, when
    given, is re-read on a 401 (rotated service-account tokens).
    """

    def __init__(self, server: str, *, headers: Mapping[str, str] | None = None,
                 ssl_context: ssl.SSLContext | bool | None = None,
                 token_file: str | None = None, timeout: float = 30.0,
                 retries: int = 4) -> None:
        self.server = server.rstrip("/")
        self._headers = dict(headers or {})
        self._ssl = ssl_context
        self._token_file = token_file
        self._timeout = timeout
        self._retries = retries
        self._session: Any = None

    @classmethod
    def from_connection_info(cls, info: Any) -> KubeClient:
        """From a :class:`kopf.ConnectionInfo` (what kopf's login functions return)."""
        token_file = SERVICE_ACCOUNT_TOKEN if info.server == "https://kubernetes.default.svc" \
            else None
        return cls(info.server, headers=info.as_http_headers(),
                   ssl_context=info.as_ssl_context(), token_file=token_file)

    async def _get_session(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, ssl=self._ssl),
                headers={"User-Agent": "scoreops-operator", **self._headers},
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
        return self._session

    def _reload_token(self) -> bool:
        if not self._token_file:
            return False
        try:
            with open(self._token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError:
            return False
        if not token or self._headers.get("Authorization") == f"Bearer {token}":
            return False
        self._headers["Authorization"] = f"Bearer {token}"
        if self._session is not None:
            self._session.headers["Authorization"] = f"Bearer {token}"
        return True

    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Any:
        """One API call; retries 429/5xx and connection errors with a short backoff."""
        import aiohttp

        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        delay = 0.2
        for attempt in range(self._retries + 1):
            session = await self._get_session()
            try:
                async with session.request(method, self.server + path, params=params, data=data,
                                           headers=headers) as resp:
                    text = await resp.text()
                    if resp.status < 400:
                        return json.loads(text) if text else None
                    if resp.status == 401 and attempt == 0 and self._reload_token():
                        continue
                    if resp.status in RETRY_STATUSES and attempt < self._retries:
                        retry_after = resp.headers.get("Retry-After", "")
                        await asyncio.sleep(float(retry_after) if retry_after.isdigit() else delay)
                        delay = min(delay * 2, 5.0)
                        continue
                    raise _api_error(resp.status, text)
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt >= self._retries:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    async def get(self, api_version: str, kind: str, namespace: str | None,
                  name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", kind_of(api_version, kind).path(namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def apply(self, obj: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER,
                    force: bool = True) -> dict[str, Any]:
        """Server-side apply ``obj`` (create it, or make the fields we own equal to it).

        Applying the same object again is a no-op on the server: the resourceVersion does
        not change, so repeated reconciles cost one request and no write.
        """
        meta = obj["metadata"]
        path = kind_of(obj["apiVersion"], obj["kind"]).path(meta.get("namespace"), meta["name"])
        params = {"fieldManager": field_manager}
        if force:
            params["force"] = "true"
        result = await self.request("PATCH", path, params=params, body=obj,
                                    content_type="application/apply-patch+yaml")
        return dict(result or {})

    async def merge_patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                          patch: Mapping[str, Any], *, subresource: str | None = None,
                          resource_version: str | None = None) -> dict[str, Any]:
        """A JSON merge patch; with ``resource_version`` it fails (409) if the object moved on."""
        body = dict(patch)
        if resource_version is not None:
            body["metadata"] = {**(body.get("metadata") or {}), "resourceVersion": resource_version}
        path = kind_of(api_version, kind).path(namespace, name, subresource)
        result = await self.request("PATCH", path, body=body,
                                    content_type="application/merge-patch+json")
        return dict(result or {})

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _api_error(status: int, text: str) -> ApiError:
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return ApiError(status, str(body.get("reason") or ""), str(body.get("message") or text),
                        body)
    return ApiError(status, "", text[:500], None)
