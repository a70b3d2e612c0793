"""What enters the pipeline.

In: SQS messages of S3 event records (``ObjectRestore:Completed``), and works an operator asks to
restore. Out: one progress row per object version (duplicates merged), each message deleted only
once its records are; restore requests sent to S3, one result a work.
"""
