#!/usr/bin/env bash
# Default sync script of the restore pipeline, with the archive's command line, so that the
# archive's own syncOneWork.sh can replace it:
#
#   syncOneWork.sh [-A] [-W] [-a archiveParent] [-w webParent] [-s successWorkList] workPath
#
# Copies workPath to <archiveParent>/<basename workPath> (and to <webParent>/... when -w is
# given), verifies the copy byte for byte (diff -r), then appends the work id to successWorkList.
# Idempotent: an identical archived copy is left as it is. An archived work that differs is
# refused unless -A (archive) / -W (web) allows replacing it; the new copy is built beside it as
# .<work>.syncing.<host>.<pid>.<start> and renamed into place whole. archiveParent must exist (nothing is
# created above the work's folder). Exit 0 only on success.
# With GLACIER_SYNC_MOVE_WORK=1 (the caller's work folder is disposable) and no -w, workPath
# itself becomes the staging folder when it is on the archive's file system: renamed, never
# copied (GLACIER_SYNC_PYTHON, default python3, makes the one rename(2) call), and verified to be
# the same folder (device and inode); elsewhere it is copied as above. A sync that fails after
# that rename puts workPath back.
# Reads syncLogDateTimeFile (a summary line is appended) when set.
set -euo pipefail

usage() {  # the header comment above, without its '# '
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
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

host=${HOSTNAME:-$(uname -n)}
read -r -a proc_stat < "/proc/$$/stat" 2>/dev/null || proc_stat=()
# <host>.<pid>.<start time>: the pipeline tells a dead sync's staging from a live one's by these
tag="${host%%.*}.$$.${proc_stat[21]:-0}"
staging=""
moved=0  # 1 while workPath itself is the staging folder (renamed, not copied)
may_move=0
if [ "${GLACIER_SYNC_MOVE_WORK:-0}" = 1 ] && [ -z "$web_parent" ]; then may_move=1; fi

# rename_only FROM TO: rename(2), nothing else. GNU mv copies and then deletes when FROM and TO
# are on different file systems (or across project-quota or subvolume boundaries); a copy cut
# short there would leave half of the work in each place. This fails instead, changing nothing.
rename_only() {
    "${GLACIER_SYNC_PYTHON:-python3}" -I -S -c \
        'import os, sys; os.rename(sys.argv[1], sys.argv[2])' "$1" "$2" 2>/dev/null
}

# Remove this run's staging copy when the script ends early (a failed cp, a refused check);
# a staging folder that is workPath itself, renamed, goes back to workPath instead.
remove_staging() {
    if [ -n "$staging" ] && [ -e "$staging" ]; then
        if [ "$moved" -eq 1 ] && [ ! -e "$work_path" ] && rename_only "$staging" "$work_path"; then
            echo "$work_path: put back from $staging"
        else
            rm -rf -- "$staging"
        fi
    fi
    moved=0
}
trap remove_staging EXIT

# Test hook (docs/reliability.md): when the file named by GLACIER_SYNC_FAULT_FILE says
# sync:<point>, mark it fired and kill the whole process group, as `kill -9` would; with
# "sync:<point> pause", wait there (at most 10 minutes) while FILE.paused exists (FILE.host
# names this host), so that a test can kill the container around the script.
fault_point() {
    local file=${GLACIER_SYNC_FAULT_FILE:-} words
    [ -n "$file" ] && [ -f "$file" ] || return 0
    read -r -a words < "$file" || true
    [ "${words[0]:-}" = "sync:$1" ] || return 0
    if [ "${words[1]:-}" = pause ]; then
        echo "${HOSTNAME:-}" > "$file.host" 2>/dev/null || true  # which container waits
        mv -- "$file" "$file.paused" 2>/dev/null || return 0
        for _ in $(seq 600); do [ -e "$file.paused" ] || return 0; sleep 1; done
        return 0
    fi
    mv -- "$file" "$file.fired" 2>/dev/null || return 0
    kill -KILL 0
}

# same_tree A B: true when both trees hold the same names, types and bytes.
same_tree() {
    diff -rq --no-dereference -- "$1" "$2" >/dev/null 2>&1
}

# install_new DEST: rename the verified staging copy to DEST, which must not exist (another
# sync of the same work may have got there first: then DEST must be identical).
install_new() {
    local dest=$1
    if mv -T -- "$staging" "$dest" 2>/dev/null; then
        echo "$dest: archived"
        return 0
    fi
    if [ -e "$dest" ] && same_tree "$staging" "$dest"; then
        echo "$dest: archived meanwhile by another sync, identical; nothing to do"
        return 0
    fi
    echo "syncOneWork.sh: cannot rename $staging to $dest (it appeared meanwhile and" \
         "differs?); refusing to replace it" >&2
    return 3
}

# replace_existing DEST: swap the verified staging copy in; the previous copy is removed
# only once the new one is in place (and put back if the swap fails).
replace_existing() {
    local dest=$1 old="$2/.$work_id.replaced.$tag"
    mv -T -- "$dest" "$old"
    fault_point swapping
    if ! mv -T -- "$staging" "$dest"; then
        mv -T -- "$old" "$dest"
        echo "syncOneWork.sh: could not swap the new copy into $dest; the old one is back" >&2
        return 5
    fi
    rm -rf -- "$old"
    echo "$dest: replaced"
}

# copy_one SOURCE PARENT REPLACE: place SOURCE at PARENT/<work id>, verified. PARENT must
# exist: this script creates nothing above the work's own folder.
copy_one() {
    local src=$1 parent=$2 replace=$3
    local dest="$parent/$work_id"
    if [ ! -d "$parent" ]; then
        echo "syncOneWork.sh: $parent does not exist; is the archive mounted? Nothing written" >&2
        return 2
    fi
    if [ -e "$dest" ]; then
        if same_tree "$src" "$dest"; then
            echo "$dest: already archived and identical; nothing to do"
            return 0
        fi
        if [ "$replace" -ne 1 ]; then
            echo "syncOneWork.sh: $dest exists and differs from $src; refusing to replace it" \
                 "without -A/-W" >&2
            return 3
        fi
    fi
    staging="$parent/.$work_id.syncing.$tag"
    rm -rf -- "$staging"
    local identity=""
    if [ "$may_move" -eq 1 ]; then
        identity=$(stat -c %d:%i -- "$src")
        rename_only "$src" "$staging" || true
        # decided by what is on disk, not by the exit status: the rename happened or it did not
        if [ ! -e "$src" ] && [ -d "$staging" ]; then
            moved=1
        else
            echo "$src: cannot be renamed into $parent (another file system?); copying it"
        fi
    fi
    if [ "$moved" -eq 1 ]; then
        fault_point copied  # the staging folder is complete (workPath itself), not verified
        # Verified: the staging folder is the very folder workPath was (same device and inode),
        # so every file in it is the one the caller wrote and checked; nothing was copied.
        if [ "$(stat -c %d:%i -- "$staging")" != "$identity" ]; then
            echo "syncOneWork.sh: $staging is not $src renamed (device:inode differ)" >&2
            return 4
        fi
        echo "$src: moved to $staging (same file system: renamed, not copied)"
    else
        # cp dies with this script (a killed run leaves no copy growing in the archive).
        if command -v setpriv >/dev/null 2>&1; then
            setpriv --pdeathsig KILL -- cp -a -- "$src" "$staging"
        else
            cp -a -- "$src" "$staging"
        fi
        fault_point copied
        if ! diff -rq --no-dereference -- "$src" "$staging"; then
            echo "syncOneWork.sh: verification of the copy in $staging failed" >&2
            return 4
        fi
    fi
    fault_point before-rename
    if [ -e "$dest" ] && [ "$replace" -eq 1 ]; then
        replace_existing "$dest" "$parent"
    else
        install_new "$dest"
    fi
    fault_point renamed
    remove_staging  # left only when another sync installed an identical copy first
    staging=""
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
