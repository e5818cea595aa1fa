"""The validation gate: a one-pass profile of the scores, rules judged by Great Expectations.

Must not import ``jobs``, ``pydantic``, ``redis`` or model libraries. Rules arrive as plain
frozen dataclasses (:mod:`validation.rules`), built by the jobs layer from the model config.
"""
