"""The archive.

In: a verified work folder. Out: the work in the archive tree (by the sync script, below the
work's group folder, replacing an archived copy only with a complete one), then the work's
local files removed once the sync is recorded.
"""
