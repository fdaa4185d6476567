"""The training job: what `python -m scoreops.train` and `scoreops run` execute.

* :mod:`.context` — everything a step needs (policy, reference, engine, data, verifier).
* :mod:`.algorithms` — one ``StepAlgorithm`` per ``spec.algorithm.name``: rollouts, rewards,
  loss and backward for one optimiser step.
* :mod:`.checkpoint` — atomic checkpoints through :mod:`scoreops.storage` and exact resume.
* :mod:`.evaluation` — greedy held-out episodes and the correction metrics.
* :mod:`.loop` — the run: setup, resume, steps, checkpoints, progress, final evaluation.
"""
