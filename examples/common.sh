# Shared by the examples' run.sh scripts: source it after setting `here`.
#
# Gives: s4ctl (s4ctl on PATH, else the repo's .venv/bin/s4ctl; $S4CTL wins),
# py SCRIPT (a quoted `python3 /abs/path/SCRIPT` for commands that run on the
# daemons' hosts), step NAME CMD... (run and time a step), print_timings, and
# delete_prefix PREFIX (rm -r that does nothing when nothing is there).

repo=$(cd "$here/../.." && pwd)
S4CTL=${S4CTL:-$(command -v s4ctl || echo "$repo/.venv/bin/s4ctl")}
s4ctl() { "$S4CTL" "$@"; }

py() { printf 'python3 %q' "$here/$1"; }

timings=()
step() {
    local name=$1 start=$EPOCHREALTIME took
    shift
    echo "== $name"
    "$@"
    took=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%7.2fs", b - a }')
    echo "   $took"
    timings+=("$took  $name")
}

print_timings() {
    echo "== timings"
    printf '%s\n' "${timings[@]}"
}

delete_prefix() {  # `ls` exits 1 when nothing is there: then there is nothing to delete
    if s4ctl ls -r "$1" >/dev/null 2>&1; then
        s4ctl rm -r "$1"
    fi
}
