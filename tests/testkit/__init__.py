"""Test harnesses, kept beside the tests (not in the scoreops wheel).

* :mod:`testkit.tiny` — a tiny random Llama with SmolLM2's tokenizer, built on the fly;
* :mod:`testkit.digits` — the digit toy: a small model and items whose reward an algorithm
  can raise in a few steps;
* :mod:`testkit.s3` — real S3 servers (rclone, Ceph radosgw) on loopback;
* :mod:`testkit.cluster` — etcd + kube-apiserver (+ the operator) on loopback.

The tests import it as ``testkit`` (``tests/`` is on ``sys.path`` through its conftest);
``bench/`` scripts put ``tests/`` on their path first.
"""
