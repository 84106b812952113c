#!/bin/sh
# The shell-pipeline peer: `kubectl get --watch | xargs -P`.
# Usage: kubectl_xargs.sh KUBECTL EXPECT CONCURRENCY [COMMAND...]
# Runs COMMAND ns name rv for each Pod the watch prints (initial list, then changes),
# CONCURRENCY at a time (sed -u passes each line on at once; head would buffer them),
# and exits once EXPECT lines were handled (kubectl is then stopped: a watch never
# ends by itself). Without COMMAND it only consumes the stream.
kubectl="$1"; expect="$2"; conc="$3"; shift 3
cols='NS:.metadata.namespace,NAME:.metadata.name,RV:.metadata.resourceVersion'
dir=$(mktemp -d); fifo="$dir/watch"; mkfifo "$fifo"
"$kubectl" get pods -A --watch --no-headers -o custom-columns="$cols" > "$fifo" &
kpid=$!
if [ "$#" -eq 0 ]; then
  sed -u "${expect}q" < "$fifo" > /dev/null
else
  sed -u "${expect}q" < "$fifo" | xargs -P "$conc" -n 3 "$@"
fi
kill "$kpid" 2>/dev/null; wait "$kpid" 2>/dev/null; rm -rf "$dir"
