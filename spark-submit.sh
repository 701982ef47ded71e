#!/usr/bin/env bash
# Run a widen job with spark-submit:
#   ./spark-submit.sh <job> [--master URL] [--deploy-mode client|cluster] [--config FILE] [job args]
# job: plan | backfill | rollback | resume | stream | reconcile | status | report | cutover | demo | generate
# Local (local[*]) by default; SPARK_MASTER or --master points it at a cluster. The library is
# shipped as a zip (--py-files), the config with --files, the JDBC/Delta jars with --jars
# (WIDEN_PACKAGES=1: --packages from Maven Central instead). Extra spark-submit options:
# SPARK_SUBMIT_OPTS_EXTRA="--conf k=v ...".
#
# Output: progress, messages and Spark's own lines on stderr; the one-line JSON summary alone on
# stdout, last. (spark-submit merges the Python driver's stderr into its stdout, so the driver
# writes the summary to a file this script prints at the end.) Exit code: the job's (0, 1, 2; 130 interrupted).
# SIGTERM/SIGINT (to this script or its process group): see the bottom.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
jobs="plan, backfill, rollback, resume, stream, reconcile, status, report, cutover, demo, generate"

json_escape() {
  local s=$1
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//$'\r'/\\r}
  printf '%s' "$s"
}

# Bad input: one line on stderr, the JSON summary on stdout, exit 2.
bad_input() {
  case " $given " in
    *" --log-format json "*|*" --log-format=json "*)
      printf '{"level": "error", "job": "%s", "logger": "spark-submit.sh", "message": "%s"}\n' \
        "$(json_escape "$1")" "$(json_escape "spark-submit.sh: $2")" >&2 ;;
    *) echo "spark-submit.sh: $2" >&2 ;;
  esac
  printf '{"job": "%s", "status": "bad_input", "error": "%s"}\n' "$(json_escape "$1")" "$(json_escape "$2")"
  exit 2
}

given="$*"
if [ $# -lt 1 ]; then
  bad_input "?" "usage: $0 <$jobs> [--master URL] [--deploy-mode client|cluster] [--config FILE] [job args]"
fi
# Help (the jobs, or one job's options): printed by the command line itself, no JVM, exit 0.
for arg in "$@"; do
  case "$arg" in
    -h|--help)
      case "$1" in -h|--help) set -- ;; esac
      PYTHONPATH="$here/lib" exec "${WIDEN_VENV:-$here/.venv}/bin/python" -m widen.cli "$@" --help ;;
  esac
done
job=$1; shift
case "$job" in
  plan|backfill|rollback|resume|stream|reconcile|status|report|cutover|demo|generate) ;;
  *) bad_input "?" "unknown job '$job' (one of: $jobs)" ;;
esac
master=${SPARK_MASTER:-local[*]}
deploy_mode=client
config=conf/local.yaml
args=()
needs_value() {   # $1 flag, $2 number of arguments left including the flag
  [ "$2" -ge 2 ] || bad_input "$job" "$1 needs a value"
}
while [ $# -gt 0 ]; do
  case "$1" in
    --master) needs_value "$1" $#; master=$2; shift 2 ;;
    --master=*) master=${1#--master=}; shift ;;
    --deploy-mode) needs_value "$1" $#; deploy_mode=$2; shift 2 ;;
    --deploy-mode=*) deploy_mode=${1#--deploy-mode=}; shift ;;
    --config) needs_value "$1" $#; config=$2; shift 2 ;;
    --config=*) config=${1#--config=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
[ -n "$master" ] || bad_input "$job" "--master needs a value"
case "$deploy_mode" in client|cluster) ;; *) bad_input "$job" "--deploy-mode must be client or cluster, got '$deploy_mode'" ;; esac
# A relative --config means relative to where the user stands; the default is the repository's.
if [ "$config" = conf/local.yaml ] && [ ! -f "$config" ]; then
  config="$here/conf/local.yaml"
fi
case "$config" in /*) ;; *) config="$PWD/$config" ;; esac
[ -f "$config" ] || bad_input "$job" "config file $config does not exist"
if [ "$deploy_mode" = cluster ] && [ "${master#spark://}" != "$master" ]; then
  # Spark itself refuses this ("Cluster deploy mode is currently not supported for python
  # applications on standalone clusters"); say so before starting anything.
  bad_input "$job" "Spark does not run Python applications in cluster deploy mode on a standalone master; use client mode (the default: the driver runs here, executors on the cluster), or cluster mode on YARN or Kubernetes"
fi
venv=${WIDEN_VENV:-$here/.venv}
submit=${SPARK_SUBMIT:-$venv/bin/spark-submit}
# Jobs that work on the catalog and the databases only start no JVM: the driver runs as plain
# Python (seconds, not a JVM start). Should one need Spark after all (rollback of a Delta target,
# cutover's own reconcile), it builds its session then, with this --master and the library as
# --py-files would ship it. Cluster deploy mode, WIDEN_PACKAGES and WIDEN_ALWAYS_SUBMIT=1 keep spark-submit.
light=""
case "$job" in
  plan|status|report|resume|rollback|cutover|generate)
    [ "$deploy_mode" = client ] && [ -z "${WIDEN_PACKAGES:-}" ] && [ -z "${WIDEN_ALWAYS_SUBMIT:-}" ] && light=1 ;;
esac
[ -n "$light" ] || [ -x "$submit" ] || bad_input "$job" "$submit not found: run 'make setup'"
[ -x "$venv/bin/python" ] || bad_input "$job" "$venv/bin/python not found: run 'make setup'"
if [ -n "$light" ]; then
  jar_opts=()
elif [ -n "${WIDEN_PACKAGES:-}" ]; then
  jar_opts=(--packages "org.postgresql:postgresql:42.7.8,io.delta:delta-spark_4.2_2.13:4.4.0,com.kohlschutter.junixsocket:junixsocket-common:2.10.1,com.kohlschutter.junixsocket:junixsocket-native-common:2.10.1")
else
  jars=$(ls "$here"/jars/*.jar 2>/dev/null | paste -sd, -)
  [ -n "$jars" ] || bad_input "$job" "no jars in $here/jars: run 'make setup'"
  jar_opts=(--jars "$jars")
fi
mkdir -p "$here/build"
# Ship the library (never pyspark) as a zip that matches the checkout: widen.pyfiles names it by its
# content and never rewrites one in place, so any number of jobs may start at once (the zip's path is
# the first line below). The same Python prints the options for the driver's JVM when spark-submit
# starts it here (widen.jvm: Spark's class archive from make setup; the quick compiler only where the
# JVM only schedules; a plain-Python job's session gets them from widen.session). A config it cannot
# read gets none: the job itself says what is wrong with it.
prepared=$("$venv/bin/python" - "$here" "$job" "$config" "$deploy_mode$light" <<'PY'
import pathlib, sys
root = pathlib.Path(sys.argv[1])
sys.path.insert(0, str(root / "lib"))
from widen import pyfiles
print(pyfiles.library_zip(root / "build", root / "lib" / "widen"))
if sys.argv[4] == "client":
    try:                                  # a speed-up only: nothing here may stop the job
        from widen import config, jvm
        try:
            loaded = config.load(sys.argv[3])
        except config.BadInput:
            loaded = None
        print(" ".join(jvm.driver_java_options(loaded, sys.argv[2], root / "jars")))
    except Exception as err:
        print(f"spark-submit.sh: no JVM options ({type(err).__name__}: {err})", file=sys.stderr)
PY
)
[ $? -eq 0 ] || { echo "spark-submit.sh: could not build the library's zip in $here/build" >&2; exit 1; }
py_zip=${prepared%%$'\n'*}
jvm_options=""
[ "$py_zip" = "$prepared" ] || jvm_options=${prepared#*$'\n'}
export TZ=UTC
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$venv/bin/python}
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$venv/bin/python}
export WIDEN_SUBMITTED=1
if [ "${master#local}" != "$master" ]; then
  # The Spark UI (and the driver) listen on SPARK_LOCAL_IP, else on every interface.
  export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
fi
# Spark's own console lines: errors only, unless the job runs with --verbose (then warnings too).
log4j="$here/lib/widen/log4j2-quiet.properties"
for arg in "${args[@]}"; do [ "$arg" = --verbose ] && log4j="$here/conf/log4j2.properties"; done
# --log-format json: every stderr line one JSON object (log4j's JSON layout for Spark's lines; the
# JVM's own warnings and the Python workers' lines wrapped by widen.log on the way out).
json_log=""; previous=""
for arg in "${args[@]}"; do
  { [ "$arg" = --log-format=json ] || { [ "$previous" = --log-format ] && [ "$arg" = json ]; }; } && json_log=1
  previous=$arg
done
if [ -n "$json_log" ]; then
  case "$log4j" in */conf/*) log4j="$here/lib/widen/log4j2-json.properties -Dwiden.log.level=warn -Dwiden.log.tasks=warn" ;;
                   *) log4j="$here/lib/widen/log4j2-json.properties" ;; esac
  # The filter ignores a supervisor's SIGTERM/SIGINT: it ends when the job's lines do (at EOF).
  exec 3> >(trap '' TERM INT; PYTHONPATH="$here/lib" exec "$venv/bin/python" -m widen.log "$job" >&2)
else
  exec 3>&2
fi
# In cluster deploy mode the driver runs elsewhere and finds the config --files shipped by its name.
job_config=$config
[ "$deploy_mode" = cluster ] && job_config=$(basename "$config")
summary=$(mktemp "${TMPDIR:-/tmp}/widen-summary.XXXXXX")
# The Python driver writes its pid here (widen.cli): where a supervisor's stop is handed on.
driver_pid=$(mktemp "${TMPDIR:-/tmp}/widen-driver.XXXXXX")
trap 'rm -f "$summary" "$driver_pid" "$driver_pid.new"' EXIT
export WIDEN_SUMMARY_FILE=$summary WIDEN_DRIVER_PID_FILE=$driver_pid
cd "$here"
if [ -n "$light" ]; then
  unset WIDEN_SUBMITTED
  WIDEN_SPARK_MASTER=$master WIDEN_PY_FILES="$py_zip" PYTHONPATH="$here/lib" \
    "$venv/bin/python" "$here/jobs/$job.py" --config "$job_config" "${args[@]}" 1>&3 2>&3 &
else
  (
    # systemd and Kubernetes send SIGTERM to every process of the job, a terminal's Ctrl-C SIGINT.
    # spark-submit's JVM must not act on it: its shutdown hooks would stop the SparkContext under
    # the Python driver, which could then neither finish its batch nor write its summary. A JVM
    # started with a signal ignored leaves it ignored, and so does the driver it starts, which sets
    # its own handlers (widen.cli); the stop reaches the driver directly (a group's signal) or from
    # the trap below. When the driver ends, the JVM does. (Cluster deploy mode: the driver runs
    # elsewhere; spark-submit takes the signal as it always did.)
    [ "$deploy_mode" = client ] && trap '' TERM INT
    # shellcheck disable=SC2086
    exec "$submit" --master "$master" --deploy-mode "$deploy_mode" "${jar_opts[@]}" --files "$config" \
      --py-files "$py_zip" ${SPARK_SUBMIT_OPTS_EXTRA:-} \
      --driver-java-options "-Duser.timezone=UTC -Dlog4j2.configurationFile=file:$log4j $jvm_options" \
      --conf spark.executor.extraJavaOptions=-Duser.timezone=UTC \
      --conf spark.sql.session.timeZone=UTC \
      --conf spark.ui.showConsoleProgress=false \
      "$here/jobs/$job.py" --config "$job_config" "${args[@]}"
  ) 1>&3 2>&3 &
fi
child=$!
# SIGTERM/SIGINT to this script: handed on to the job's driver, then this script waits for it. The
# stream stops after its current batch (exit 0), another job is interrupted (exit 130, finished work
# kept); either writes its summary and frees its locks. The driver takes a repeated stop as one.
stop=""; stop_sent=""
hand_on_stop() {
  local pid=""
  if [ -n "$light" ] || [ "$deploy_mode" = cluster ]; then
    pid=$child
  else
    read -r pid <"$driver_pid" 2>/dev/null
  fi
  [ -n "$pid" ] || return 0            # the driver has not started yet: handed on when it has
  kill "-$stop" "$pid" 2>/dev/null
  stop_sent=1
}
trap 'stop=TERM; hand_on_stop' TERM
trap 'stop=INT; hand_on_stop' INT
while :; do
  if [ -n "$stop" ] && [ -z "$stop_sent" ] && kill -0 "$child" 2>/dev/null; then
    sleep 0.2; hand_on_stop; continue
  fi
  wait "$child"; code=$?
  kill -0 "$child" 2>/dev/null || break
done
if [ -n "$stop" ] && [ "$code" -gt 128 ]; then
  # That wait may have been cut short by the stop's trap just as the job ended: its own code.
  wait "$child" 2>/dev/null; again=$?
  [ "$again" -eq 127 ] || code=$again
fi
exec 3>&-      # the JSON filter (if any) ends when the job's lines do
if [ -s "$summary" ]; then
  cat "$summary"
else
  printf '{"job": "%s", "status": "error", "error": "the job exited with code %s before it wrote its summary (see stderr)"}\n' \
    "$(json_escape "$job")" "$code"
  [ "$code" -ne 0 ] || code=1
fi
exit "$code"
