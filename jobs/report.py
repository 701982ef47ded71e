"""Entry point for spark-submit: `./spark-submit.sh report --config conf/local.yaml …`."""
import sys

from widen.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
