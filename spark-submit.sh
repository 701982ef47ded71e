#!/usr/bin/env bash
# Run a widen job with spark-submit:  ./spark-submit.sh <job> [--master URL] [--config FILE] [job args]
# job: plan | backfill | rollback | stream | demo | generate
# Local (local[*]) by default; SPARK_MASTER or --master points it at a cluster. The library is
# shipped as a zip (--py-files) and the JDBC/Delta jars with --jars.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -lt 1 ]; then
  echo "usage: $0 <plan|backfill|rollback|stream|demo|generate> [--master URL] [--config FILE] [args]" >&2
  exit 2
fi
job=$1; shift
if [ ! -f "$here/jobs/$job.py" ]; then
  echo "spark-submit.sh: unknown job '$job' (plan, backfill, rollback, stream, demo, generate)" >&2
  exit 2
fi
master=${SPARK_MASTER:-local[*]}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --master) master=$2; shift 2 ;;
    --master=*) master=${1#--master=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
venv=${WIDEN_VENV:-$here/.venv}
submit=${SPARK_SUBMIT:-$venv/bin/spark-submit}
[ -x "$submit" ] || { echo "spark-submit.sh: $submit not found: run 'make setup'" >&2; exit 2; }
jars=$(ls "$here"/jars/*.jar 2>/dev/null | paste -sd, -)
[ -n "$jars" ] || { echo "spark-submit.sh: no jars in $here/jars: run 'make setup'" >&2; exit 2; }
mkdir -p "$here/build"
# Ship the library (never pyspark) as a zip; rebuilt every run so it matches the checkout.
"$venv/bin/python" - "$here" <<'PY'
import pathlib, sys, zipfile
root = pathlib.Path(sys.argv[1])
with zipfile.ZipFile(root / "build" / "widen.zip", "w", zipfile.ZIP_DEFLATED) as zf:
    for path in sorted((root / "lib" / "widen").rglob("*.py")):
        zf.write(path, path.relative_to(root / "lib"))
PY
export TZ=UTC
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$venv/bin/python}
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$venv/bin/python}
export WIDEN_SUBMITTED=1
cd "$here"
exec "$submit" --master "$master" --jars "$jars" --py-files "$here/build/widen.zip" \
  --driver-java-options "-Duser.timezone=UTC -Dlog4j2.configurationFile=file:$here/conf/log4j2.properties" \
  --conf spark.executor.extraJavaOptions=-Duser.timezone=UTC \
  --conf spark.sql.session.timeZone=UTC \
  --conf spark.ui.showConsoleProgress=false \
  "$here/jobs/$job.py" "${args[@]}"
