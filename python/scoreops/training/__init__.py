"""The training job: what `python -m scoreops.train` and `scoreops run` execute.

* :mod:`.context` — everything a step needs (policy, reference, engine, data, verifier).
* :mod:`.steps` — one ``TrainingStep`` per algorithm, each in its own module: rollouts,
  rewards, loss and backward for one optimiser step (the loss math is
  :mod:`scoreops.algorithms`; what the rest of the code knows of an algorithm is
  :mod:`scoreops.algorithms.registry`).
* :mod:`.lora` — CORY's two LoRA adapters on one frozen base.
* :mod:`.checkpoint` — atomic checkpoints through :mod:`scoreops.storage` and exact resume.
* :mod:`.evaluation` — greedy held-out episodes and the correction metrics.
* :mod:`.loop` — the run: setup, resume, steps, checkpoints, progress, final evaluation.
"""
