"""Thin kopf handlers: validate -> build -> apply -> record, all through scoreops.k8s."""
