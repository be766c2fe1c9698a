"""The autotuner's verdicts on disk: one plain JSON file in the user's cache folder.

The file maps a key -- a hash of the network's text, the input shapes and
free sizes, dtype, device, torch version, thread count and the compile
options -- to the label of the lowering chosen for each term, with the times
measured. It lives in ``$TNCONV_CACHE_DIR``, else platformdirs'
``user_cache_dir("tnconv")`` when platformdirs is installed, else
``$XDG_CACHE_HOME/tnconv`` (``~/.cache/tnconv``).

Writes are atomic: the new content goes to a temporary file in the same
folder that then replaces the old one (``os.replace``), under an advisory
lock where the platform has one, after merging what other processes wrote
meanwhile. A file that cannot be read or parsed is ignored with a warning
(and replaced by the next write); a folder that cannot be written only
warns. The cache never raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

#: Environment variable naming the cache folder (tests point it at a temporary one).
ENV = "TNCONV_CACHE_DIR"

#: The file in that folder.
FILENAME = "autotune.json"

#: Format of the file; another format is treated as empty.
FORMAT = 1

_memo: Dict[str, tuple] = {}  # path -> ((mtime_ns, size), entries): parse a file once while it is unchanged
_lock = threading.Lock()


def cache_dir() -> Path:
    """The folder of the autotune cache (see the module docstring for the order of choices).

    Example:
        >>> (cache_dir() / FILENAME).name
        'autotune.json'
    """
    given = os.environ.get(ENV)
    if given:
        return Path(given).expanduser()
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return Path(base) / "tnconv"
    return Path(platformdirs.user_cache_dir("tnconv", appauthor=False))


def key_of(fields: dict) -> str:
    """The cache key of a plan's ``fields`` (JSON-able): a SHA-256 of their canonical JSON.

    Example:
        >>> key_of({"a": 1, "b": [2]}) == key_of({"b": [2], "a": 1})
        True
    """
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def text_hash(text: str) -> str:
    """A short hash of a network's text, part of its cache key.

    Example:
        >>> len(text_hash("conv2d")), text_hash("a") == text_hash("a")
        (32, True)
    """
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class AutotuneCache:
    """The autotune cache file: ``len()``, ``entries()``, ``get``, ``put``, ``clear()``; ``print()`` shows it.

    Example:
        >>> import tempfile, pathlib
        >>> cache = AutotuneCache(pathlib.Path(tempfile.mkdtemp()) / "autotune.json")
        >>> cache.put("k", {"choice": ["native"], "fields": {"network": "conv2d"}})
        >>> cache.get("k")["choice"], len(cache)
        (['native'], 1)
        >>> cache.clear(); len(cache)
        0
    """

    def __init__(self, path: Optional[Path] = None):
        self.path = Path(path) if path is not None else cache_dir() / FILENAME

    # -- reading ---------------------------------------------------------------
    def entries(self) -> Dict[str, dict]:
        """Key -> entry (``fields``, ``choice``, ``ms``, ``created``); ``{}`` if the file is missing or unreadable."""
        try:
            stat = self.path.stat()
        except OSError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        with _lock:
            memo = _memo.get(str(self.path))
        if memo is not None and memo[0] == stamp:
            return memo[1]
        entries = self._read()
        with _lock:
            _memo[str(self.path)] = (stamp, entries)
        return entries

    def _read(self) -> Dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            warnings.warn(f"tnconv's autotune cache {self.path} cannot be read ({type(error).__name__}: {error}); "
                          "ignoring it (the next verdict replaces it)", RuntimeWarning, stacklevel=3)
            return {}
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
            warnings.warn(f"tnconv's autotune cache {self.path} is not in format {FORMAT}; ignoring it "
                          "(the next verdict replaces it)", RuntimeWarning, stacklevel=3)
            return {}
        return {k: v for k, v in data["entries"].items() if isinstance(v, dict) and isinstance(v.get("choice"), list)}

    def get(self, key: str) -> Optional[dict]:
        """The entry of ``key``, or ``None``."""
        return self.entries().get(key)

    def __len__(self) -> int:
        return len(self.entries())

    # -- writing ---------------------------------------------------------------
    def put(self, key: str, entry: dict) -> None:
        """Store ``entry`` under ``key``, merged with what the file holds now; warns instead of raising."""
        entry = dict(entry, created=entry.get("created", time.time()))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                entries = dict(self._read() if self.path.exists() else {})
                entries[key] = entry
                self._write(entries)
        except OSError as error:
            warnings.warn(f"tnconv's autotune cache {self.path} cannot be written ({type(error).__name__}: {error}); "
                          "the verdict holds for this process only", RuntimeWarning, stacklevel=3)

    def clear(self) -> None:
        """Remove every entry (the file is deleted)."""
        try:
            with self._locked():
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            warnings.warn(f"tnconv's autotune cache {self.path} cannot be removed ({error})", RuntimeWarning, stacklevel=2)
        with _lock:
            _memo.pop(str(self.path), None)

    def _write(self, entries: Dict[str, dict]) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as f:
                json.dump({"format": FORMAT, "entries": entries}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)  # atomic: readers see the old file or the new one, never half
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    @contextlib.contextmanager
    def _locked(self):
        """An advisory lock on ``<file>.lock`` where ``fcntl`` exists (so merges do not lose entries)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: atomic replace only
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- showing ---------------------------------------------------------------
    def rows(self) -> List[dict]:
        """One flat dict per entry (network, shapes, dtype, device, threads, choice, times), oldest first."""
        rows = []
        for key, entry in sorted(self.entries().items(), key=lambda kv: kv[1].get("created", 0)):
            fields = entry.get("fields", {})
            rows.append(dict(key=key[:12], network=fields.get("name", "?"), shapes=fields.get("shapes", {}),
                             dtype=fields.get("dtype", "?"), device=fields.get("device", "?"),
                             threads=fields.get("threads", "?"), choice=entry["choice"], ms=entry.get("ms", [])))
        return rows

    def __repr__(self) -> str:
        rows = self.rows()
        lines = [f"tnconv autotune cache {self.path}: {len(rows)} plan(s)"]
        for r in rows:
            shapes = " ".join(f"{n}={tuple(s)}" for n, s in r["shapes"].items())
            lines.append(f"  {r['network']} {shapes} {r['dtype']} {r['device']} threads={r['threads']}: "
                         f"{', '.join(r['choice'])}")
        return "\n".join(lines)


def autotune_cache() -> AutotuneCache:
    """The autotune cache of this process (at :func:`cache_dir`): ``print`` it to see it, ``.clear()`` it.

    Example:
        >>> import tnconv
        >>> cache = tnconv.autotune_cache()
        >>> cache.clear(); len(cache)
        0
    """
    return AutotuneCache()


__all__ = ["ENV", "FILENAME", "FORMAT", "AutotuneCache", "autotune_cache", "cache_dir", "key_of", "text_hash"]
