#!/usr/bin/env bash
# Runs this build's binary with its arguments under heaptrack's allocation tracer (Debian's
# `heaptrack`), writing `$HEAPTRACK_OUT/<program>-<pid>.zst` (default target/heaptrack). Unlike
# `heaptrack PROGRAM`, it execs the program, so that the process a benchmark started and samples
# is the program itself. For `SOAK_SERVE_BIN` (tests/bench/soak.rs); read a profile with
# `heaptrack_print --print-peaks 1 FILE.zst`.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${HEAPTRACK_BIN:-$here/target/release/truebit-federation}"
out="${HEAPTRACK_OUT:-$here/target/heaptrack}"
lib=/usr/lib/heaptrack
mkdir -p "$out"
trace="$out/$(basename "$bin")-$$"
mkfifo "$trace.pipe"
# The interpreter reads the pipe until the program exits, then writes the last of the profile.
"$lib/libexec/heaptrack_interpret" < "$trace.pipe" | zstd -q -c > "$trace.zst" &
LD_PRELOAD="$lib/libheaptrack_preload.so" DUMP_HEAPTRACK_OUTPUT="$trace.pipe" exec "$bin" "$@"
