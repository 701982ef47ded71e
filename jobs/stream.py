"""Entry point for spark-submit: `./spark-submit.sh stream --config conf/local.yaml [--once]`."""
import sys

from widen.cli import main

if __name__ == "__main__":
    sys.exit(main(["stream", *sys.argv[1:]]))
