"""The download.

In: a work's row (bucket, key, eTag, size) whose restored copy is available. Out: the object as
``incoming/<key>`` beside its completion record, fetched in journaled ranges and checked end to
end against S3's checksum or eTag; refused first when the work cannot fit on the disks.
"""
