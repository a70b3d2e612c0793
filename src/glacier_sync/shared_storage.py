"""Proof that this process sees the instance's shared folders, not empty local ones.

With CeleryExecutor one work's download, debag and sync may run on three different workers,
possibly on three machines: each must see the same data root (the downloaded zips) and work
root (the debagged folders). ``airflow-init`` marks both with the instance's id
(``instance_id``, from deploy.sh); every worker checks the marks before it starts and before
every phase. A worker whose mount is missing (an empty local folder in its place) is refused at
start, and a phase that meets a mount lost later is retried (a transient failure), never run
against the wrong folder: a zip downloaded there would be invisible to the next phase, and a
debag there would look like a lost work folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from glacier_sync.errors import ConfigError, TransientError
from glacier_sync.settings import Settings

MARKER = ".glacier-sync-instance"


class SharedStorageMissing(TransientError):
    """A shared folder lacks this instance's mark: it is not mounted here (or another's)."""


def shared_roots(settings: Settings) -> dict[str, Path]:
    """The folders every worker of an instance must share, by setting name."""
    return {"data_root": settings.data_root, "work_root": settings.work_dir}


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def mark_shared_roots(settings: Settings) -> list[Path]:
    """Write the instance's mark into each shared folder (``airflow-init``); return those
    written. A folder marked by another instance is refused: two instances must never share a
    data or work folder."""
    instance = _require_instance(settings)
    written = []
    for name, root in shared_roots(settings).items():
        marker = root / MARKER
        found = _read(marker)
        if found == instance:
            continue
        if found is not None:
            raise ConfigError(
                f"{name} {root} belongs to instance {found}, not {instance}: give this "
                "instance its own folder (two instances must not share one)"
            )
        root.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f"{MARKER}.{os.getpid()}.tmp")
        tmp.write_text(instance + "\n", encoding="utf-8")
        os.replace(tmp, marker)
        written.append(marker)
    return written


def check_shared_roots(settings: Settings) -> None:
    """Raise SharedStorageMissing unless every shared folder carries this instance's mark.

    Nothing is checked when ``instance_id`` is unset (one machine, no Compose stack)."""
    instance = settings.instance_id
    if not instance:
        return
    for name, root in shared_roots(settings).items():
        found = _read(root / MARKER)
        if found != instance:
            seen = "no mark" if found is None else f"the mark of instance {found}"
            raise SharedStorageMissing(
                f"{name} {root} holds {seen} ({MARKER}), not this instance's {instance}: this "
                f"machine does not see the instance's shared {name}; mount it here "
                "(docs/operations.md, 'Add a worker on another machine')"
            )


def _require_instance(settings: Settings) -> str:
    if not settings.instance_id:
        raise ConfigError(
            "instance_id is not set (GLACIER_SYNC_INSTANCE_ID): deploy.sh writes it to .env; "
            "re-run deploy.sh for this instance"
        )
    return settings.instance_id
