"""The library as one zip for Spark's ``--py-files`` (``addPyFile``), named by what it holds.

Jobs may start at the same instant from one checkout (a scheduler's minute). A zip rewritten in
place breaks the others: a driver imports lazily from its zip, and Spark's executors fetch the file
again and refuse one that "exists and does not match contents". So each start reads the sources once,
names the zip by a digest of those bytes, and writes it only when no zip of that name is there: into
a private temporary file, then renamed into place. A zip, once there, never changes. ``widen.zip``
beside it is a link to the newest one, for schedulers that name one path (replaced atomically too).

    python -m widen.pyfiles DIR        # prints the zip's path
"""
from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

#: fixed entry time: the same sources make the same bytes, whenever and wherever they are zipped
_EPOCH = (1980, 1, 1, 0, 0, 0)
LATEST = "widen.zip"


def _sources(package_dir: Path) -> list[tuple[str, bytes]]:
    root = package_dir.parent
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        out.append((path.relative_to(root).as_posix(), path.read_bytes()))
    return out


def library_zip(dest: str | os.PathLike, package_dir: str | os.PathLike | None = None) -> Path:
    """The zip of ``package_dir`` (this installed ``widen``) in ``dest``: ``widen-<digest>.zip``."""
    package_dir = Path(package_dir or Path(__file__).resolve().parent)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    sources = _sources(package_dir)         # read once: the name and the bytes agree whatever changes meanwhile
    digest = hashlib.sha256()
    for name, data in sources:
        digest.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    final = dest / f"widen-{digest.hexdigest()[:20]}.zip"
    if not final.exists():
        fd, tmp = tempfile.mkstemp(prefix=".widen-", suffix=".zip.tmp", dir=dest)
        try:
            with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
                for name, data in sources:
                    info = zipfile.ZipInfo(name, _EPOCH)
                    info.external_attr = 0o644 << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(info, data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)          # another start may have put the same bytes there: no matter
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    _link_latest(final)
    return final


def _link_latest(final: Path) -> None:
    latest = final.with_name(LATEST)
    tmp = final.with_name(f".{LATEST}.{uuid.uuid4().hex}.tmp")     # one start's own, whatever shares the folder
    linked = False
    try:
        if latest.exists() and os.path.samefile(latest, final):
            return
        os.link(final, tmp)
        linked = True
        os.replace(tmp, latest)
    except OSError:
        pass                                # a convenience only; the jobs use the named zip
    finally:
        # rename() between two links of one file does nothing and succeeds (POSIX): when another
        # start linked the same zip after our check, our link is still there under its temporary name
        if linked:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m widen.pyfiles DIR\n")
        return 2
    sys.stdout.write(f"{library_zip(argv[0])}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
