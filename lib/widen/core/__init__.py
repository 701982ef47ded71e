"""The pure core: naming and rendering rules, the pivot and dedup kernels, layout rules, chunks and the
checksum algebra. No Spark session, no database connection."""
