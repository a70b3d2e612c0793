"""The bag.

In: a downloaded BagIt zip. Out: the work folder ``<work root>/<WorkRID>`` (payload, tags in
``<WorkRID>.bag/``), every file hashed against the manifests in one read, a marker vouching for
it, and the fixity evidence; or a refusal naming every problem, with nothing kept.
"""
