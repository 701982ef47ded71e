"""widen: migrate narrow (EAV) ship telemetry into one wide table per ship, with Spark and PostgreSQL.

The jobs run through ``spark-submit.sh`` in a checkout, the ``widen`` console command of an installed
wheel (``widen <job> --config FILE``), or notebooks (``widen.notebook``)."""
