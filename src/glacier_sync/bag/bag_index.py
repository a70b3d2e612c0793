"""The per-file tables of one debag, kept on disk so that memory does not grow with the file
count: every member's name (NFC) and the folders the names make, and the payload manifests'
digests. One table each, keyed by path (a name is stored only where NFC changes it). A
SQLite file in the debag's own staging folder, private to one process and removed
with that folder; written without journal or sync (a killed debag starts again from the zip)."""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Iterator
from pathlib import Path

CACHE_KIB = 8 * 1024  # SQLite's page cache: the memory the tables may take, whatever their size
RECENT_FOLDERS = 1024  # folders remembered as recorded (members come grouped, or nearly)
MAX_PROBLEMS = 1000  # problems named one by one; the rest are counted

_SCHEMA = """
CREATE TABLE names (path TEXT PRIMARY KEY, seq INTEGER NOT NULL, is_dir INTEGER NOT NULL,
                    name TEXT, start INTEGER NOT NULL, end INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE folders (path TEXT PRIMARY KEY, member TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE manifest (path TEXT PRIMARY KEY, d0 BLOB, d1 BLOB, d2 BLOB, d3 BLOB, raw TEXT,
                       gap INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
"""


def nfc(path: str) -> str:
    return unicodedata.normalize("NFC", path)


class Problems(list):
    """Problem lines, the first ``MAX_PROBLEMS`` named and the rest counted."""

    def __init__(self) -> None:
        super().__init__()
        self.more = 0

    def add(self, line: str) -> None:
        if len(self) < MAX_PROBLEMS:
            self.append(line)
        else:
            self.more += 1

    def lines(self) -> list[str]:
        return list(self) + ([f"... and {self.more} more"] if self.more else [])


class RecentSet:
    """The last ``size`` distinct keys seen: ``add`` says whether a key is new to it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.keys: dict[str, None] = {}

    def add(self, key: str) -> bool:
        if key in self.keys:
            return False
        if len(self.keys) >= self.size:
            del self.keys[next(iter(self.keys))]  # the oldest
        self.keys[key] = None
        return True


class BagIndex:
    """One SQLite file holding a debag's tables (``names``, ``folders``, ``manifest``)."""

    def __init__(self, path: Path) -> None:
        uri = Path(path).resolve().as_uri() + "?nolock=1"  # private: no locks (safe on NFS)
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{CACHE_KIB}"):
                self.db.execute(f"PRAGMA {pragma}")
            self.db.executescript(_SCHEMA)
            self.db.execute("BEGIN")
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def rows(self, sql: str, *args) -> Iterator[tuple]:
        return self.db.execute(sql, args)

    def one(self, sql: str, *args) -> tuple | None:
        return self.db.execute(sql, args).fetchone()


class MemberNames:
    """The zip's member names, added one by one as the directory is read: a name stored twice,
    names that are one path once NFC-normalised (extracted, one would be lost), and a file
    that is also the folder of other members are found without a table in memory."""

    def __init__(self, index: BagIndex) -> None:
        self.index = index
        self.twice: dict[str, None] = {}
        self.twins: dict[str, list[str]] = {}  # NFC path -> its names (only paths that clash)
        self.clash_count = 0
        self.seq = 0  # members added: their order in the zip
        self.recent = RecentSet(RECENT_FOLDERS)  # folders recorded lately

    def add(self, name: str, is_dir: bool, start: int, end: int) -> None:
        """Record a member; ``start`` and ``end``: where its local record begins in the zip and
        where its data ends at the least (header, name and data; the header's extra field is
        not known here)."""
        path = nfc(name)
        self.seq += 1
        row = (path, self.seq, int(is_dir), name if name != path else None, start, end)
        try:
            self.index.db.execute("INSERT INTO names VALUES (?, ?, ?, ?, ?, ?)", row)
        except sqlite3.IntegrityError:
            self._clash(path, name)
        folder = path.rstrip("/") if is_dir else path.rpartition("/")[0]
        if folder and self.recent.add(folder):
            self._add_folders(folder, name)

    def _add_folders(self, folder: str, member: str) -> None:
        parts = folder.split("/")
        self.index.db.executemany(
            "INSERT OR IGNORE INTO folders VALUES (?, ?)",
            (("/".join(parts[:end]), member) for end in range(1, len(parts) + 1)),
        )

    def _clash(self, path: str, name: str) -> None:
        self.clash_count += 1
        if self.clash_count > MAX_PROBLEMS:
            return
        (seen,) = self.index.one("SELECT coalesce(name, path) FROM names WHERE path = ?", path)
        if seen == name:
            self.twice[name] = None
        elif name not in (group := self.twins.setdefault(path, [seen])):
            group.append(name)

    def clashes(self) -> list[str]:
        """Names stored twice, Unicode twins, then files that are also folders (in zip order)."""
        lines = [f"{n}: stored more than once" for n in sorted(self.twice)] + [
            f"{path}: stored under {len(group)} names that differ only in Unicode normalisation "
            f"({' and '.join(ascii(n) for n in group)}); keep one"
            for path, group in self.twins.items()
        ]
        if self.clash_count > MAX_PROBLEMS:
            lines.append(f"... and {self.clash_count - MAX_PROBLEMS} more names stored twice")
        joined = "FROM folders f JOIN names n ON n.path = f.path WHERE n.is_dir = 0"
        found = [
            f"{name}: a file, but {member} makes it a folder; keep one of them"
            for name, member in self.index.rows(
                f"SELECT coalesce(n.name, n.path), f.member {joined} ORDER BY n.seq LIMIT ?",
                MAX_PROBLEMS,
            )
        ]
        return lines + found + self._more(f"SELECT count(*) {joined}", len(found))

    def _more(self, count_sql: str, named: int) -> list[str]:
        """``... and N more`` when the query (a LIMITed one, sorted in bounded memory) named
        fewer than it found."""
        if named < MAX_PROBLEMS:
            return []
        (count,) = self.index.one(count_sql)
        return [f"... and {count - named} more"] if count > named else []

    def overlaps(self, directory_start: int) -> list[str]:
        """Members whose data runs into the next member's record, or into the directory (a
        zip bomb's overlapping entries, which newer ``zipfile`` versions refuse too)."""
        self.index.db.execute("CREATE INDEX IF NOT EXISTS names_start ON names (start)")
        found = Problems()
        before = None  # (name, end) of the member before, in the zip's byte order
        for name, start, end in self.index.rows(  # read along the index: no sort in memory
            "SELECT coalesce(name, path), start, end FROM names INDEXED BY names_start "
            "ORDER BY start"
        ):
            if before is not None and before[1] > start:
                found.add(f"{before[0]}: its data overlaps the next entry of the zip")
            before = (name, end)
        if before is not None and before[1] > directory_start:
            found.add(f"{before[0]}: its data overlaps the zip's directory")
        return found.lines()

    def outside(self, root: str) -> list[str]:
        """Members not under the bag folder ``root`` (its own parent folders excepted)."""
        found = Problems()
        for (name,) in self.index.rows(  # sorted by path, the table's own order
            "SELECT coalesce(name, path) AS member FROM names WHERE substr(member, 1, ?) != ?",
            len(root),
            root,
        ):
            if not (name.endswith("/") and root.startswith(name)):
                found.add(f"{name}: outside the bag")
        return found.lines()

    def unlisted(self, root: str) -> list[str]:
        """Payload files missing from the zip or from the manifests (paths under ``root``),
        each list sorted; none when every file is listed and every listed file is there."""
        bag_folder = nfc(root)
        prefix = bag_folder + "data/"
        cut = len(bag_folder) + 1  # SQLite counts from 1
        missing, extra = Problems(), Problems()
        for (path,) in self.index.rows(
            "SELECT substr(m.path, ?) FROM manifest m WHERE NOT EXISTS "
            "(SELECT 1 FROM names n WHERE n.path = m.path AND n.is_dir = 0) ORDER BY m.path",
            cut,
        ):
            missing.add(f"{path}: listed in the manifest but missing from the zip")
        for (path,) in self.index.rows(
            "SELECT substr(n.path, ?) FROM names n WHERE n.is_dir = 0 AND substr(n.path, 1, ?) = ? "
            "AND NOT EXISTS (SELECT 1 FROM manifest m WHERE m.path = n.path) ORDER BY n.path",
            cut,
            len(prefix),
            prefix,
        ):
            extra.add(f"{path}: in the zip but not in any manifest")
        return missing.lines() + extra.lines()
