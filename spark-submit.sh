#!/usr/bin/env bash
# Run a widen job with spark-submit:
#   ./spark-submit.sh <job> [--master URL] [--deploy-mode client|cluster] [--config FILE] [job args]
# job: plan | backfill | rollback | stream | reconcile | demo | generate
# Local (local[*]) by default; SPARK_MASTER or --master points it at a cluster. The library is
# shipped as a zip (--py-files), the config with --files, the JDBC/Delta jars with --jars
# (WIDEN_PACKAGES=1: --packages from Maven Central instead). Extra spark-submit options:
# SPARK_SUBMIT_OPTS_EXTRA="--conf k=v ...".
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -lt 1 ]; then
  echo "usage: $0 <plan|backfill|rollback|stream|reconcile|demo|generate> [--master URL] [--config FILE] [args]" >&2
  exit 2
fi
job=$1; shift
if [ ! -f "$here/jobs/$job.py" ]; then
  echo "spark-submit.sh: unknown job '$job' (plan, backfill, rollback, stream, reconcile, demo, generate)" >&2
  exit 2
fi
master=${SPARK_MASTER:-local[*]}
deploy_mode=client
config=conf/local.yaml
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --master) master=$2; shift 2 ;;
    --master=*) master=${1#--master=}; shift ;;
    --deploy-mode) deploy_mode=$2; shift 2 ;;
    --deploy-mode=*) deploy_mode=${1#--deploy-mode=}; shift ;;
    --config) config=$2; args+=("$1" "$2"); shift 2 ;;
    --config=*) config=${1#--config=}; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ "$deploy_mode" = cluster ] && [ "${master#spark://}" != "$master" ]; then
  # Spark itself refuses this ("Cluster deploy mode is currently not supported for python
  # applications on standalone clusters"); say so before starting anything.
  echo "spark-submit.sh: Spark does not run Python applications in cluster deploy mode on a standalone" \
       "master; use client mode (the default: the driver runs here, executors on the cluster)," \
       "or cluster mode on YARN or Kubernetes" >&2
  exit 2
fi
venv=${WIDEN_VENV:-$here/.venv}
submit=${SPARK_SUBMIT:-$venv/bin/spark-submit}
[ -x "$submit" ] || { echo "spark-submit.sh: $submit not found: run 'make setup'" >&2; exit 2; }
if [ -n "${WIDEN_PACKAGES:-}" ]; then
  jar_opts=(--packages "org.postgresql:postgresql:42.7.8,io.delta:delta-spark_4.2_2.13:4.4.0")
else
  jars=$(ls "$here"/jars/*.jar 2>/dev/null | paste -sd, -)
  [ -n "$jars" ] || { echo "spark-submit.sh: no jars in $here/jars: run 'make setup'" >&2; exit 2; }
  jar_opts=(--jars "$jars")
fi
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
file_opts=()
if [ -f "$config" ]; then file_opts=(--files "$config"); fi
# shellcheck disable=SC2086
exec "$submit" --master "$master" --deploy-mode "$deploy_mode" "${jar_opts[@]}" "${file_opts[@]}" \
  --py-files "$here/build/widen.zip" ${SPARK_SUBMIT_OPTS_EXTRA:-} \
  --driver-java-options "-Duser.timezone=UTC -Dlog4j2.configurationFile=file:$here/conf/log4j2.properties" \
  --conf spark.executor.extraJavaOptions=-Duser.timezone=UTC \
  --conf spark.sql.session.timeZone=UTC \
  --conf spark.ui.showConsoleProgress=false \
  "$here/jobs/$job.py" "${args[@]}"
