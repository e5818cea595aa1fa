"""Helpers of the batchscore DAG files (Airflow, PyYAML and stdlib imports only)."""
