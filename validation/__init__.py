"""The validation gate: a one-pass profile of the scores, rules judged by Great Expectations.

:func:`~batchscore.validation.profile.compute_profile` profiles a run in one pass,
:func:`~batchscore.validation.gate.evaluate` judges it against :mod:`~batchscore.validation.rules`
(plain frozen dataclasses the jobs layer builds from the model config) and a reference profile,
and :mod:`~batchscore.validation.report` presents the verdict. Never imports the jobs, the
executors, pydantic, redis or model libraries. Private (underscored): ``_partials`` (mergeable
per-task partial profiles and sketches), ``_drift`` (PSI and KL).
"""

__all__ = ["gate", "profile", "report", "rules"]
