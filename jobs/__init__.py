"""Driver-side composition root: one module per verb (score, validate, publish, run).

Each ``jobs/<verb>.py`` parses arguments, builds the SparkSession and calls a plain function that
takes everything as parameters (tests call those directly). jobs may import udfs, validation and
batchscore; nothing imports jobs.
"""
