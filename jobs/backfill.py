"""Entry point for spark-submit: `./spark-submit.sh backfill --config conf/local.yaml …`."""
import sys

from widen.cli import main

if __name__ == "__main__":
    sys.exit(main(["backfill", *sys.argv[1:]]))
