"""Entry point for spark-submit: `./spark-submit.sh reconcile --config conf/local.yaml [--repair]`."""
import sys

from widen.cli import main

if __name__ == "__main__":
    sys.exit(main(["reconcile", *sys.argv[1:]]))
