"""Entry point for spark-submit: `./spark-submit.sh status --config conf/local.yaml …`."""
import sys

from widen.cli import main

if __name__ == "__main__":
    sys.exit(main(["status", *sys.argv[1:]]))
