"""The one downloader every data source uses, and safe archive extraction.

:func:`download` fetches a URL to a file with ``requests``:

* streamed in chunks with a :func:`neuroprobe.utils.progress` bar;
* written to ``<dest>.part`` and resumed with an HTTP ``Range`` request after a broken
  connection (also across runs: a later call picks up the ``.part`` file);
* retried with exponential back-off (``backoff * 2**attempt`` seconds) on connection errors,
  time-outs and 5xx answers; 4xx answers fail at once;
* connect and read time-outs;
* the byte count checked against ``Content-Length``/``Content-Range`` and, when given, the
  expected ``size`` and ``sha256``;
* renamed onto ``dest`` atomically only once complete and verified;
* refused up front when the destination disk lacks the space.

A mirror replaces the scheme and host of every URL (the path is kept): pass ``mirror=`` or set
``NEUROPROBE_MIRROR``, e.g. ``NEUROPROBE_MIRROR=http://my.mirror/netdissect`` turns
``http://netdissect.csail.mit.edu/data/broden1_224.zip`` into
``http://my.mirror/netdissect/data/broden1_224.zip``.

:func:`extract` unpacks zip and tar archives into a temporary folder next to the target and
renames it into place, so a corrupt archive leaves nothing half-extracted.  Entries with absolute
paths, ``..`` components, links that point outside the target or to a folder holding them
(``up -> ..``), and device files are refused.  :func:`fetch` also checks the archive's layout
before moving its data folder into place, and deletes a downloaded file that fails a check.

Every failure is a :class:`neuroprobe.errors.DownloadError` with a one-line message.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from .errors import DownloadError, suggest
from .utils import progress

__all__ = ["download", "extract", "fetch", "mirror_url", "KNOWN", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 30.0
#: Free space kept in reserve on top of the bytes a download or extraction needs.
SPACE_MARGIN = 64 * 1024 * 1024

#: Data sets the downloader knows by name: URL, archive folder name and (where published)
#: size and sha256.  The hosts publish no checksums, so only the byte count is verified.
KNOWN: dict[str, dict] = {
    "broden": {"url": "http://netdissect.csail.mit.edu/data/broden1_224.zip",
               "folder": "broden1_224", "about": "Broden 224x224 (about 1 GB)",
               "expect": ["index.csv"]},
    "broden227": {"url": "http://netdissect.csail.mit.edu/data/broden1_227.zip",
                  "folder": "broden1_227", "about": "Broden 227x227 (about 1 GB)",
                  "expect": ["index.csv"]},
    "broden384": {"url": "http://netdissect.csail.mit.edu/data/broden1_384.zip",
                  "folder": "broden1_384", "about": "Broden 384x384 (about 2 GB)",
                  "expect": ["index.csv"]},
    "coco-annotations-2017": {
        "url": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        "folder": "annotations_trainval2017", "inner": "annotations",
        "about": "COCO 2017 instance + keypoint annotations (241 MB)",
        "expect": ["instances_val2017.json"]},
    "coco-val2017": {"url": "http://images.cocodataset.org/zips/val2017.zip",
                     "folder": "val2017", "about": "COCO 2017 validation images (5,000; 778 MB)"},
    "coco-annotations-2014": {
        "url": "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
        "folder": "annotations_trainval2014", "inner": "annotations",
        "about": "COCO 2014 annotations (SALICON images are COCO 2014)",
        "expect": ["instances_val2014.json"]},
}


def mirror_url(url: str, mirror: str | None = None) -> str:
    """``url`` with scheme and host replaced by ``mirror`` (or ``$NEUROPROBE_MIRROR``)."""
    mirror = mirror if mirror is not None else os.environ.get("NEUROPROBE_MIRROR", "")
    if not mirror:
        return url
    path = urlsplit(url).path.lstrip("/")
    return mirror.rstrip("/") + "/" + path


def _check_space(folder: Path, needed: int, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed + SPACE_MARGIN > free:
        raise DownloadError(f"not enough disk space for {what} in {folder}: needs "
                            f"{_human(needed)} (+{_human(SPACE_MARGIN)} reserve), "
                            f"{_human(free)} free", hint="free space or choose another folder")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


class _Retry(Exception):
    """A transient failure worth another try (message kept for the final error)."""


def _total_from(resp, offset: int) -> int | None:
    """Full size of the resource from a 200 or 206 answer."""
    if resp.status_code == 206:
        cr = resp.headers.get("Content-Range", "")
        # "bytes 100-999/1000"
        try:
            total = cr.split("/")[-1]
            return int(total) if total != "*" else None
        except ValueError:
            return None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
             size: int | None = None, mirror: str | None = None,
             timeout: float = DEFAULT_TIMEOUT, retries: int = 4, backoff: float = 1.0,
             chunk_size: int = 1 << 20, session=None, desc: str | None = None) -> Path:
    """Download ``url`` to the file ``dest`` (resumable, verified, atomic).

    Parameters
    ----------
    url : str
        What to fetch (http or https).
    dest : path
        The file to create.  If it exists and matches ``size``/``sha256`` (where given) nothing
        is downloaded.  Partial data lives in ``dest + ".part"`` until complete.
    sha256, size : optional
        Expected checksum and byte count; a mismatch deletes the partial file and raises.
    mirror : str, optional
        Replaces scheme and host of ``url`` (default ``$NEUROPROBE_MIRROR``).
    timeout : float
        Connect and read time-out in seconds (a read stalled this long counts as a failure).
    retries : int
        Further attempts after the first; each waits ``backoff * 2**attempt`` seconds.
    session : requests.Session, optional
        For connection reuse (and tests).

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    DownloadError
        HTTP error, time-out, repeated connection failure, size or checksum mismatch, no space.
    """
    import requests

    dest = Path(dest)
    url = mirror_url(url, mirror)
    if dest.is_file() and _matches(dest, size, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if size is not None:
        have = part.stat().st_size if part.exists() else 0
        _check_space(dest.parent, max(size - have, 0), f"downloading {url}")
    sess = session or requests.Session()
    last = "no attempt made"
    try:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                _attempt(sess, url, part, size, timeout, chunk_size, desc or dest.name)
                break
            except _Retry as err:
                last = str(err)
        else:
            raise DownloadError(f"download of {url} failed after {retries + 1} tries: {last}",
                                hint="check the connection and rerun (the transfer resumes), "
                                "or set NEUROPROBE_MIRROR to a mirror")
    finally:
        if session is None:
            sess.close()
    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise DownloadError(f"download of {url} has {got} bytes, expected {size}",
                            hint="the file on the server differs from the known one; "
                            "rerun or use a mirror")
    if sha256 is not None:
        digest = _sha256(part)
        if digest.lower() != sha256.lower():
            part.unlink()
            raise DownloadError(f"download of {url} has sha256 {digest[:16]}..., expected "
                                f"{sha256[:16]}...", hint="the transfer was corrupted or the "
                                "server's file changed; rerun or use a mirror")
    os.replace(part, dest)
    return dest


def _matches(path: Path, size: int | None, sha256: str | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    if sha256 is not None and _sha256(path).lower() != sha256.lower():
        return False
    return True


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _attempt(sess, url: str, part: Path, size: int | None, timeout: float, chunk_size: int,
             desc: str) -> None:
    """One request; appends to ``part``.  Raises _Retry on transient failure."""
    import requests

    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = sess.get(url, stream=True, timeout=(timeout, timeout), headers=headers)
    except requests.exceptions.Timeout:
        raise _Retry(f"no answer within {timeout:g} s") from None
    except requests.exceptions.RequestException as err:
        raise _Retry(f"cannot connect ({type(err).__name__})") from None
    with contextlib.closing(resp):
        if resp.status_code == 416 and offset:
            # the part file is already complete (or longer than the resource): start over
            # unless the server confirms the size
            total = resp.headers.get("Content-Range", "").split("/")[-1]
            if total.isdigit() and int(total) == offset:
                return
            part.unlink()
            raise _Retry("the server refused the resume range; restarting")
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise _Retry(f"HTTP {resp.status_code} {resp.reason}")
        if resp.status_code >= 400:
            raise DownloadError(f"download of {url} failed: HTTP {resp.status_code} "
                                f"{resp.reason}", hint="check the URL, or set NEUROPROBE_MIRROR "
                                "to a mirror that holds the file")
        if resp.status_code == 206:
            start = resp.headers.get("Content-Range", "bytes 0-").split()[-1].split("-")[0]
            if not start.isdigit() or int(start) != offset:
                part.unlink(missing_ok=True)
                raise _Retry("the server answered a different range; restarting")
            mode = "ab"
        else:  # 200: the server sends the whole file (ignores or was not asked a range)
            offset = 0
            mode = "wb"
        total = _total_from(resp, offset)
        if total is not None and size is not None and total != size:
            raise DownloadError(f"the server reports {total} bytes for {url}, expected {size}",
                                hint="the file changed on the server; use a mirror")
        if total is not None:
            _check_space(part.parent, total - offset, f"downloading {url}")
        written = offset
        bar = progress(total=total, initial=offset, unit="B", unit_scale=True,
                       unit_divisor=1024, desc=desc, leave=False)
        try:
            with open(part, mode) as fh:
                try:
                    for block in resp.iter_content(chunk_size=chunk_size):
                        if block:
                            fh.write(block)
                            written += len(block)
                            bar.update(len(block))
                except requests.exceptions.RequestException as err:
                    reason = ("read stalled for " f"{timeout:g} s" if _is_timeout(err)
                              else f"connection broken after {written} bytes")
                    raise _Retry(reason) from None
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            bar.close()
        if total is not None and written < total:
            raise _Retry(f"connection closed after {written} of {total} bytes")
        if total is not None and written > total:
            part.unlink()
            raise _Retry(f"received {written} bytes, more than the announced {total}")


def _is_timeout(err: Exception) -> bool:
    text = f"{type(err).__name__} {err}"
    return "timed out" in text.lower() or "timeout" in text.lower()


# ---------------------------------------------------------------------------------------------
# archives

def _safe_name(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DownloadError(f"archive {archive} holds an entry with an absolute path ({name!r}); "
                            "refused", hint="the archive is unsafe: get it from a trusted source")
    if ".." in p.parts:
        raise DownloadError(f"archive {archive} holds an entry that escapes the target folder "
                            f"({name!r}); refused",
                            hint="the archive is unsafe: get it from a trusted source")
    return p


def _archive_kind(archive: Path) -> str:
    if zipfile.is_zipfile(archive):
        return "zip"
    try:
        if tarfile.is_tarfile(archive):
            return "tar"
    except OSError:
        pass
    raise DownloadError(f"{archive} is not a zip or tar archive (or it is corrupt)",
                        hint="delete it and download it again")


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a zip or tar archive into the new folder ``dest``, safely and atomically.

    The archive is checked entry by entry before anything is written (absolute paths, ``..``
    components, links escaping ``dest`` and special files are refused), extracted into a
    temporary sibling folder and renamed onto ``dest`` once complete; on any failure the
    temporary folder is removed and ``dest`` is not created.

    Returns ``dest``.
    """
    archive = Path(archive)
    dest = Path(dest)
    if not archive.is_file():
        raise DownloadError(f"archive {archive} does not exist")
    if dest.exists():
        raise DownloadError(f"cannot extract {archive.name}: {dest} already exists",
                            hint="remove it or choose another folder")
    kind = _archive_kind(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extracting-", dir=dest.parent))
    try:
        if kind == "zip":
            _extract_zip(archive, tmp)
        else:
            _extract_tar(archive, tmp)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _extract_zip(archive: Path, tmp: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _safe_name(info.filename, archive)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise DownloadError(f"archive {archive} holds a symbolic link "
                                        f"({info.filename!r}); refused",
                                        hint="the archive is unsafe: get it from a trusted source")
            _check_space(tmp, sum(i.file_size for i in infos), f"extracting {archive.name}")
            for info in progress(infos, desc=f"extract {archive.name}", unit="file",
                                 leave=False):
                target = tmp / _safe_name(info.filename, archive)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as err:
        raise DownloadError(f"archive {archive} is corrupt ({err})",
                            hint="delete it and download it again") from None
    except OSError as err:
        raise DownloadError(f"cannot extract {archive}: {err.strerror or err}") from None


def _extract_tar(archive: Path, tmp: Path) -> None:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            root = tmp.resolve()
            for m in members:
                p = _safe_name(m.name, archive)
                if m.issym() or m.islnk():
                    link = PurePosixPath(m.linkname)
                    base = PurePosixPath(*p.parts[:-1]) if m.issym() else PurePosixPath()
                    resolved = os.path.normpath(os.path.join(root, base, link))
                    here = os.path.normpath(os.path.join(root, base))
                    # strictly inside the target, and not a folder holding the link (a loop)
                    loop = m.issym() and (here == resolved
                                          or here.startswith(resolved.rstrip(os.sep) + os.sep))
                    if link.is_absolute() or loop or not resolved.startswith(str(root) + os.sep):
                        raise DownloadError(f"archive {archive} holds a link that points "
                                            f"outside the target ({m.name!r} -> "
                                            f"{m.linkname!r}); refused",
                                            hint="the archive is unsafe: get it from a "
                                            "trusted source")
                elif not (m.isfile() or m.isdir()):
                    raise DownloadError(f"archive {archive} holds a special file ({m.name!r}); "
                                        "refused", hint="the archive is unsafe")
            _check_space(tmp, sum(m.size for m in members), f"extracting {archive.name}")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tf.extractall(tmp, **kwargs)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"archive {archive} is corrupt or unreadable ({err})",
                            hint="delete it and download it again") from None


def fetch(name: str, out: str | os.PathLike, *, mirror: str | None = None,
          timeout: float = DEFAULT_TIMEOUT, keep_archive: bool = False) -> Path:
    """Download and extract a data set from :data:`KNOWN` into ``out``.

    Returns the extracted data folder (``out / KNOWN[name]["folder"]``).  Nothing is fetched if
    that folder exists already.  The archive is kept in ``out`` only when ``keep_archive``.

    Before the data folder is moved into place the archive's layout is checked: it must hold the
    expected folder (``KNOWN[name]["inner"]`` or ``["folder"]``) with the expected files
    (``["expect"]``), and every link in it must stay inside it.  An archive that fails a check
    (an HTML page answered with status 200, a corrupt or foreign archive) is deleted, so that the
    next run downloads it again; nothing is left in ``out``.
    """
    if name not in KNOWN:
        raise DownloadError(f"unknown data set {name!r}",
                            hint=f"{suggest(name, KNOWN, 'data set')}; known: "
                            f"{', '.join(KNOWN)}")
    entry = KNOWN[name]
    out = Path(out).expanduser()
    folder = out / entry["folder"]
    if folder.exists():
        return folder
    url = entry["url"]
    archive = out / Path(urlsplit(url).path).name
    download(url, archive, sha256=entry.get("sha256"), size=entry.get("size"), mirror=mirror,
             timeout=timeout)
    unpacked = out / f".{archive.stem}.unpacked"
    if unpacked.exists():
        shutil.rmtree(unpacked)
    try:
        _check_not_html(archive, mirror_url(url, mirror))
        extract(archive, unpacked)
        source = _expected_layout(unpacked, entry, archive)
        _check_links(source, archive)
        os.rename(source, folder)
    except DownloadError as err:
        # a file that fails its check is not kept: the next run fetches it again
        archive.unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)
        keep = err.hint if err.hint and "download it again" not in err.hint else ""
        raise DownloadError(err.message, hint=(keep + "; " if keep else "")
                            + "the downloaded file was removed, so a rerun fetches it "
                            "again") from None
    shutil.rmtree(unpacked, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return folder


def _check_not_html(archive: Path, url: str) -> None:
    """An HTML page (a login, error or "moved" page answered with status 200) where an archive
    was expected."""
    with open(archive, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        raise DownloadError(f"{url} answered a web page, not the archive ({archive.name} is "
                            "HTML)", hint="check the URL or --mirror")


def _expected_layout(unpacked: Path, entry: dict, archive: Path) -> Path:
    """The folder of ``unpacked`` that becomes the data folder, after checking it holds what
    the data set must hold."""
    want = entry.get("inner", entry["folder"])
    source = unpacked / want
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in unpacked.iterdir())[:5]
    if not source.is_dir() or source.is_symlink():
        raise DownloadError(f"archive {archive.name} does not hold the folder {want}/ (found: "
                            f"{', '.join(found) or 'nothing'})",
                            hint="it is not the expected data set; check the URL or --mirror")
    missing = [f for f in entry.get("expect", ()) if not (source / f).exists()]
    if missing or not any(source.iterdir()):
        raise DownloadError(f"archive {archive.name}: {want}/ lacks "
                            f"{', '.join(missing) or 'any file'}",
                            hint="it is not the expected data set; check the URL or --mirror")
    return source


def _check_links(folder: Path, archive: Path) -> None:
    """Every symbolic link under ``folder`` points to something strictly inside it and not to
    a folder that contains the link (``up -> ..`` would make the data folder a loop, or reach
    outside once moved)."""
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                continue
            target = Path(os.path.realpath(p))
            inside = target != root and root in target.parents
            loop = target == p.parent.resolve() or target in p.parent.resolve().parents
            if not inside or loop:
                raise DownloadError(f"archive {archive.name} holds a link that leaves the data "
                                    f"folder ({p.relative_to(folder.parent)} -> "
                                    f"{os.readlink(p)}); refused",
                                    hint="the archive is unsafe: get it from a trusted source")
