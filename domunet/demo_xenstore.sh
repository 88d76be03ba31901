#!/bin/sh
# A stand-in for Xen's xenstore-read, -write, -list and -rm over the directory $XENSTORE_DIR,
# for `domunet lab` (and the tests): `sh demo_xenstore.sh TOOL ARGS...` acts as TOOL does.
# A relative key is relative to the calling domain's home, $XENSTORE_HOME (local/domain/N).
path() {
    case "$1" in /*) echo "$XENSTORE_DIR$1" ;; *) echo "$XENSTORE_DIR/$XENSTORE_HOME/$1" ;; esac
}
tool=$1
shift
case "$tool" in
xenstore-read)
    for key; do
        file=$(path "$key")
        [ -f "$file" ] || { echo "couldn't read path $key" >&2; exit 1; }
        cat "$file"; echo
    done ;;
xenstore-write)
    while [ $# -ge 2 ]; do
        file=$(path "$1")
        mkdir -p "$(dirname "$file")" && printf '%s' "$2" > "$file" || exit 1
        shift 2
    done ;;
xenstore-list)
    dir=$(path "$1")
    [ -d "$dir" ] || { echo "couldn't list path $1" >&2; exit 1; }
    ls "$dir" ;;
xenstore-rm)
    for key; do rm -rf "$(path "$key")"; done ;;
*)
    echo "$tool: not a xenstore tool this stand-in knows" >&2; exit 2 ;;
esac
