"""Driver side: one module per verb, each a plain function plus a thin ``main`` (argument parsing).

``batchscore <verb>``, ``python -m batchscore <verb>`` and ``spark-submit jobs/<verb>.py`` all run
``batchscore.jobs.<verb>.main``; tests and notebooks call the plain function (``score(spark, cfg,
run_id=...)``) with everything as parameters. This layer may import every other one
(``batchscore.udfs``, ``batchscore.validation``, the base package); nothing imports it but the CLI.

Private modules (underscored, no stable API): ``_entry`` (arguments, summaries, exit codes),
``_state`` (run ids and reports), ``_inputs`` (opening and checking the input), ``_session`` (the
SparkSession builder).
"""

__all__ = ["backfill", "demo", "gc", "history", "publish", "reconcile", "rollback", "run", "score", "validate"]
