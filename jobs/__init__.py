"""Driver side: one module per verb, each a plain function plus a thin ``main`` (argument parsing).

``batchscore <verb>``, ``python -m batchscore <verb>`` and ``spark-submit jobs/<verb>.py`` all run
``batchscore.jobs.<verb>.main``; tests and notebooks call the plain function (``score(spark, cfg,
run_id=...)``) with everything as parameters. This layer may import every other one
(``batchscore.udfs``, ``batchscore.validation``, the base package); nothing imports it but the CLI.

Internal modules (no stable API): ``entry`` (arguments, summaries, exit codes), ``state`` (run ids
and reports), ``inputs`` (opening and checking the input), ``session`` (the SparkSession builder).
"""

__all__ = ["backfill", "demo", "gc", "history", "publish", "reconcile", "rollback", "run", "score", "validate"]
