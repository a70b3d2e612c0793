"""What the ``glacier-sync`` commands share: exit statuses and the settings a command runs with."""

from __future__ import annotations

import argparse
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2  # success; a work or operation failed; usage


def settings_from(args: argparse.Namespace, **overrides: Any):
    """The settings of ``--config``, ``--env`` and ``--data-dir`` (loaded when asked: pydantic
    is imported by the command, not by ``--help``)."""
    from glacier_sync.settings import load_settings

    if getattr(args, "data_dir", None):
        overrides.setdefault("data_root", args.data_dir)
    return load_settings(args.config, args.env, **overrides)
