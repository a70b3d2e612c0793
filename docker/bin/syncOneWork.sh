#!/usr/bin/env bash
# Default sync script of the restore pipeline, with the archive's command line, so that the
# archive's own syncOneWork.sh can replace it:
#
#   syncOneWork.sh [-A] [-W] [-a archiveParent] [-w webParent] [-s successWorkList] workPath
#
# Copies workPath to <archiveParent>/<basename workPath> (and to <webParent>/... when -w is
# given), verifies the copy byte for byte, then appends the work id to successWorkList.
# Idempotent: an identical archived copy is left as it is. An archived work that differs is
# refused unless -A (archive) / -W (web) allows replacing it. Exit 0 only on success.
# Reads syncLogDateTimeFile (a summary line is appended) when set.
set -euo pipefail

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}

replace_archive=0
replace_web=0
archive_parent=""
web_parent=""
success_list=""
while getopts ":AWa:w:s:h" opt; do
    case "$opt" in
        A) replace_archive=1 ;;
        W) replace_web=1 ;;
        a) archive_parent=$OPTARG ;;
        w) web_parent=$OPTARG ;;
        s) success_list=$OPTARG ;;
        h) usage; exit 0 ;;
        :) echo "syncOneWork.sh: option -$OPTARG needs a value" >&2; exit 2 ;;
        *) echo "syncOneWork.sh: unknown option -$OPTARG (see -h)" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -ne 1 ]; then
    echo "syncOneWork.sh: give exactly one workPath (see -h)" >&2
    exit 2
fi
work_path=${1%/}
if [ ! -d "$work_path" ]; then
    echo "syncOneWork.sh: work folder $work_path does not exist" >&2
    exit 2
fi
if [ -z "$archive_parent" ]; then
    echo "syncOneWork.sh: -a archiveParent is required" >&2
    exit 2
fi
work_id=$(basename "$work_path")

# copy_one SOURCE PARENT REPLACE: place SOURCE at PARENT/<work id>, verified.
copy_one() {
    local src=$1 parent=$2 replace=$3
    local dest="$parent/$work_id"
    mkdir -p "$parent"
    if [ -e "$dest" ]; then
        if diff -rq --no-dereference "$src" "$dest" >/dev/null 2>&1; then
            echo "$dest: already archived and identical; nothing to do"
            return 0
        fi
        if [ "$replace" -ne 1 ]; then
            echo "syncOneWork.sh: $dest exists and differs from $src; refusing to replace it" \
                 "without -A/-W" >&2
            return 3
        fi
    fi
    local staging="$parent/.$work_id.syncing.$$"
    rm -rf "$staging"
    cp -a "$src" "$staging"
    if ! diff -rq --no-dereference "$src" "$staging"; then
        rm -rf "$staging"
        echo "syncOneWork.sh: verification of the copy in $staging failed" >&2
        return 4
    fi
    if [ -e "$dest" ]; then
        local old="$parent/.$work_id.replaced.$$"
        mv "$dest" "$old"
        mv "$staging" "$dest"
        rm -rf "$old"
        echo "$dest: replaced"
    else
        mv "$staging" "$dest"
        echo "$dest: archived"
    fi
}

copy_one "$work_path" "$archive_parent" "$replace_archive"
if [ -n "$web_parent" ]; then
    copy_one "$work_path" "$web_parent" "$replace_web"
fi
if [ -n "${syncLogDateTimeFile:-}" ]; then
    mkdir -p "$(dirname "$syncLogDateTimeFile")"
    echo "$(date -u +%FT%TZ) $work_id synced to $archive_parent" >> "$syncLogDateTimeFile"
fi
if [ -n "$success_list" ]; then
    echo "$work_id" >> "$success_list"
fi
