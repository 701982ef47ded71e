"""Entry point for spark-submit: `./spark-submit.sh resume --config conf/local.yaml --ships A`."""
import sys

from widen.cli import main

if __name__ == "__main__":
    sys.exit(main(["resume", *sys.argv[1:]]))
