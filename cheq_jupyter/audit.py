"""The audit log: one JSON line per decision, hash-chained, on disk before any tool runs.

Every decision, by any approver, becomes one line of a JSONL file (``cheq-audit.jsonl`` in the
kernel's working directory, which in Jupyter is the notebook's directory; or the path in
``CHEQ_JUPYTER_AUDIT_LOG``; or any path given to :class:`AuditLog`).  The agent loop calls
:meth:`AuditLog.record` right after the approver answers and before any tool runs; the line is
written with one ``write``, flushed and ``fsync``-ed before ``record`` returns, so a kernel
killed afterwards (even with ``kill -9``) loses no decision it acted on::

    from cheq_jupyter import run_agent
    from cheq_jupyter.audit import AuditLog
    result = run_agent(prompt, tools=tools, approver=approver, recorder=AuditLog())

A record holds: ``time`` (of the decision, UTC), ``run_id``, ``step``, ``tool``,
``tool_call_id``, ``arguments`` (the model's), ``effective_arguments`` (what the tool runs
with; ``null`` when not approved), ``status``, ``note``, ``decided_by`` (card, cheqpoint,
console, policy, replay...), ``response_time`` (seconds from the request being put to the
approver to the decision), ``args_hash`` (SHA-256 of the canonical JSON of ``{tool,
arguments}``), ``prev_hash``, ``hash``, ``key_id`` and ``mac`` (below).

The chain: ``hash`` is the SHA-256 of the record's canonical JSON without ``hash`` and
``mac``, and ``prev_hash`` is the previous record's ``hash`` (:data:`GENESIS` for the first).
Editing a line breaks its ``hash``; deleting, inserting or reordering lines breaks the next
``prev_hash``.  :func:`verify` names the first bad line.

Authentication: each record also carries ``key_id`` and ``mac``, an HMAC-SHA256 of its
``hash`` under the *audit key*, a secret kept outside the log: ``$CHEQ_JUPYTER_AUDIT_KEY``
(for CI), else the per-user key file ``$XDG_CONFIG_HOME/cheq-jupyter/audit.key`` (default
``~/.config/cheq-jupyter/audit.key``), created with mode 0600 on first use.  A record whose
hash was recomputed after an edit, or a record appended by someone without the key, fails
:func:`verify` (and so :func:`load` and replay refuse the log).

Truncation: beside the log, ``<log>.head`` holds the number of records, the last hash and an
HMAC of both; it is overwritten (one write of one fixed-size block, under the log's lock)
after every record's fsync.  :func:`verify` checks
the log still reaches that head, so cutting records off the end is detected, and
:meth:`AuditLog.record` refuses to append to a log that no longer reaches its head.

What this does not protect: anyone who can read the audit key can forge a whole log; deleting
the log *and* its head together leaves nothing to verify (keep copies elsewhere if that
matters); putting back an older log together with its older head is not detected (pass a
head kept elsewhere, e.g. ``verify(path, head=...)`` with an :attr:`AuditLog.head` noted in a
ticket); after a power loss the head may lag the log by the last record(s), which still need
a valid MAC.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import hmac
import html
import json
import math
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._safe_text import safe_text
from .approval import ApprovalRequest, Decision
from .errors import AuditLogError, ConfigurationError

if TYPE_CHECKING:
    import pandas

__all__ = [
    "DEFAULT_FILENAME",
    "GENESIS",
    "KEY_ENV",
    "PATH_ENV",
    "AuditLog",
    "AuditRecord",
    "AuditTable",
    "args_hash",
    "canonical_json",
    "default_path",
    "head_path",
    "key_path",
    "load",
    "repair",
    "table",
    "to_dataframe",
    "verify",
]

#: ``prev_hash`` of the first record of a log.
GENESIS = "0" * 64
#: The file name used in the working directory when no path is given.
DEFAULT_FILENAME = "cheq-audit.jsonl"
#: Environment variable that sets the default path.
PATH_ENV = "CHEQ_JUPYTER_AUDIT_LOG"
#: Environment variable holding the audit key (for CI); else the per-user key file is used.
KEY_ENV = "CHEQ_JUPYTER_AUDIT_KEY"
FORMAT_VERSION = 2

_FIELDS_V1: tuple[str, ...] = (
    "v", "time", "run_id", "step", "tool", "tool_call_id", "arguments", "effective_arguments",
    "status", "note", "decided_by", "response_time", "args_hash", "prev_hash", "hash",
)
_FIELDS: tuple[str, ...] = (*_FIELDS_V1, "key_id", "mac")
_NOT_HASHED = frozenset({"hash", "mac"})


def default_path() -> Path:
    """``$CHEQ_JUPYTER_AUDIT_LOG``, else ``cheq-audit.jsonl`` in the working directory."""
    configured = os.environ.get(PATH_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.cwd() / DEFAULT_FILENAME


def key_path() -> Path:
    """The per-user audit key file: ``$XDG_CONFIG_HOME/cheq-jupyter/audit.key``."""
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or "~/.config"
    return Path(base).expanduser() / "cheq-jupyter" / "audit.key"


def head_path(path: str | os.PathLike[str]) -> Path:
    """Where the head of the log at ``path`` is kept: ``<path>.head``."""
    where = Path(path).expanduser()
    return where.with_name(where.name + ".head")


def _audit_key(explicit: bytes | str | None = None) -> bytes:
    """The audit key: ``explicit``, ``$CHEQ_JUPYTER_AUDIT_KEY``, or the key file (made once)."""
    if explicit is not None:
        key = explicit.encode("utf-8") if isinstance(explicit, str) else bytes(explicit)
        if len(key) < 16:
            raise AuditLogError("The audit key is shorter than 16 bytes; use a longer secret.")
        return key
    configured = os.environ.get(KEY_ENV, "").strip()
    if configured:
        if len(configured) < 16:
            raise AuditLogError(
                f"{KEY_ENV} is shorter than 16 characters; set it to a long random secret "
                "(e.g. the output of `python -c 'import secrets; print(secrets.token_hex(32))'`)."
            )
        return configured.encode("utf-8")
    path = key_path()
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    # Written whole under a private name, then linked into place: another process making
    # the key at the same moment either wins (and we read its key) or loses; nobody ever
    # reads half a key.
    draft = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, (secrets.token_hex(32) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
            os.link(draft, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise AuditLogError(
            f"Cannot create the audit key file {path} ({exc.strerror or exc}); set {KEY_ENV} "
            "or XDG_CONFIG_HOME to a writable place."
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(draft)
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    try:
        info = path.stat()
        data = path.read_bytes().strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise AuditLogError(
            f"Cannot read the audit key file {path} ({exc.strerror or exc}); set {KEY_ENV} instead."
        ) from exc
    if os.name == "posix" and info.st_mode & 0o077:
        raise AuditLogError(
            f"The audit key file {path} can be read or written by other users, so they could "
            f"forge audit records; run `chmod 600 {path}` (and check nobody copied it)."
        )
    if len(data) < 16:
        raise AuditLogError(
            f"The audit key file {path} holds less than 16 bytes; delete it to get a new key "
            "(older logs then no longer verify), or restore the original."
        )
    return data


@functools.lru_cache(maxsize=8)
def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"cheq-jupyter audit key id\0" + key).hexdigest()[:16]


def _mac(key: bytes, record_hash: str) -> str:
    return hmac.new(key, f"cheq-audit-record:{record_hash}".encode(), hashlib.sha256).hexdigest()


def _head_mac(key: bytes, records: int, record_hash: str) -> str:
    message = f"cheq-audit-head:{records}:{record_hash}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def canonical_json(value: Any) -> str:
    """The one JSON spelling hashes are taken over: sorted keys, no spaces, UTF-8 text.

    Values JSON has no type for (dates, decimals...) are written as their ``str``; NaN and
    infinities raise :class:`~cheq_jupyter.errors.AuditLogError`.
    """
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
            default=str,
        )
    except ValueError:
        raise AuditLogError(
            "The arguments hold a number JSON cannot represent (NaN or infinity); the decision "
            "was not recorded, so the call does not run."
        ) from None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def args_hash(tool: str, arguments: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``{"tool": tool, "arguments": arguments}``.

    Two calls have the same hash exactly when they name the same tool with equal arguments
    (key order does not matter); :class:`~cheq_jupyter.approvers.ReplayApprover` matches on it.
    """
    return _sha256(canonical_json({"tool": tool, "arguments": dict(arguments)}))


@dataclass(frozen=True)
class AuditRecord:
    """One decision as recorded; ``line`` is its 1-based line number in the file."""

    time: str
    run_id: str
    step: int
    tool: str
    tool_call_id: str
    arguments: dict[str, Any]
    effective_arguments: dict[str, Any] | None
    status: str
    note: str | None
    decided_by: str
    response_time: float | None
    args_hash: str
    prev_hash: str
    hash: str
    key_id: str = ""
    mac: str = ""
    line: int = field(default=0, compare=False)

    @property
    def approved(self) -> bool:
        return self.status == "approved"

    @property
    def edited(self) -> bool:
        """Approved with arguments other than the model's."""
        return self.approved and self.effective_arguments != self.arguments

    def to_json(self) -> dict[str, Any]:
        """The record as written (without ``line``)."""
        data = {name: getattr(self, name) for name in _FIELDS if name != "v"}
        return {"v": FORMAT_VERSION, **data}

    @classmethod
    def _from_json(cls, data: dict[str, Any], line: int) -> AuditRecord:
        values = {name: data[name] for name in _FIELDS if name != "v" and name in data}
        return cls(**values, line=line)


def _content_hash(data: Mapping[str, Any]) -> str:
    return _sha256(canonical_json({k: v for k, v in data.items() if k not in _NOT_HASHED}))


def _build(
    request: ApprovalRequest, decision: Decision, response_time: float | None, prev: str,
    key: bytes,
) -> tuple[dict[str, Any], str]:
    """The record (hash and MAC included) and its line (JSON, without the newline)."""
    # Normalise through JSON so the record holds exactly what a reader will load back.
    arguments_json = canonical_json(dict(request.details))
    arguments = json.loads(arguments_json)
    effective = None
    if decision.approved:
        effective = (
            json.loads(canonical_json(dict(decision.modified_details)))
            if decision.modified_details is not None else arguments
        )
    body: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "time": decision.decided_at.astimezone(_dt.timezone.utc).isoformat(
            timespec="milliseconds"
        ),
        "run_id": request.run_id,
        "step": request.step,
        "tool": request.action,
        "tool_call_id": request.tool_call_id,
        "arguments": arguments,
        "effective_arguments": effective,
        "status": decision.status,
        "note": decision.decision_note,
        "decided_by": decision.decided_by,
        "response_time": None if response_time is None else round(max(response_time, 0.0), 6),
        # = args_hash(request.action, arguments), without encoding the arguments twice
        "args_hash": _sha256(
            f'{{"arguments":{arguments_json},"tool":{canonical_json(request.action)}}}'
        ),
        "prev_hash": prev,
        "key_id": _key_id(key),
    }
    unsigned = canonical_json(body)  # = what _content_hash hashes: no hash, no mac yet
    body["hash"] = _sha256(unsigned)
    body["mac"] = _mac(key, body["hash"])
    # The line is that JSON with hash and mac added at the end (readers do not care about
    # key order), which saves encoding the whole record a second time.
    return body, f'{unsigned[:-1]},"hash":"{body["hash"]}","mac":"{body["mac"]}"}}'


# -- writing ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(fd: int, *, shared: bool = False) -> Iterator[None]:
    """An exclusive lock between processes appending to the same log (POSIX; no-op elsewhere);
    ``shared`` for readers."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _torn_message(path: Path, line: int) -> str:
    return (
        f"Line {line} of the audit log {path} is an incomplete record, left by a crash while "
        f"it was being written (that decision never took effect); the {line - 1} record(s) "
        "before it are intact. Run cheq_jupyter.audit.repair(path) to set it aside."
    )


class AuditLog:
    """An append-only, hash-chained JSONL log of decisions.

    ``record`` is safe to call from several threads, and from several processes on POSIX
    (an ``flock`` around each append keeps the chain whole).  Use it as the agent loop's
    ``recorder``; it is also an ordinary object with :meth:`records` and :meth:`verify`.
    ``key`` overrides the audit key (default: ``$CHEQ_JUPYTER_AUDIT_KEY`` or the key file,
    made on first use); a key that cannot be had or is unsafe raises
    :class:`~cheq_jupyter.errors.AuditLogError` here, before any run starts.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, key: bytes | str | None = None
    ) -> None:
        self.path = Path(path).expanduser() if path is not None else default_path()
        self._explicit_key = key
        # Found now, so a missing or unsafe key stops a run before anyone is asked to decide.
        self._key = _audit_key(key)
        self._head_file = str(head_path(self.path))
        self._lock = threading.Lock()
        # (file size, last hash, number of lines) as of our last look, to skip re-reading.
        self._tail: tuple[int, str, int] | None = None

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def record(
        self, request: ApprovalRequest, decision: Decision, *, response_time: float | None = None
    ) -> AuditRecord:
        """Append ``decision`` on ``request``; returns once the line is on disk (fsync).

        Raises :class:`~cheq_jupyter.errors.AuditLogError` when the log cannot be written or
        its last line is not a complete record; the loop then stops before any tool runs.
        """
        with self._lock:
            created = False
            try:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
                except FileNotFoundError:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
                    created = True
            except OSError as exc:
                raise AuditLogError(
                    f"Cannot open the audit log {self.path} ({exc.strerror or exc}); choose a "
                    f"writable path with AuditLog(path) or {PATH_ENV}."
                ) from exc
            try:
                with _file_lock(fd):
                    size, prev, lines = self._read_tail(fd)
                    body, line = _build(request, decision, response_time, prev, self._key)
                    data = (line + "\n").encode("utf-8")
                    _write_all(fd, data)
                    os.fsync(fd)
                    self._tail = (size + len(data), body["hash"], lines + 1)
                    _write_head(self._head_file, lines + 1, body["hash"], self._key)
            except OSError as exc:
                raise AuditLogError(
                    f"Could not write to the audit log {self.path} ({exc.strerror or exc}); "
                    "the decision was not recorded, so the call does not run."
                ) from exc
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)
            return AuditRecord._from_json(body, lines + 1)

    @property
    def head(self) -> str:
        """The hash of the last record (:data:`GENESIS` for an empty or missing log)."""
        if not self.path.exists():
            return GENESIS
        records = load(self.path, verify=False)
        return records[-1].hash if records else GENESIS

    def records(self, *, verify: bool = True) -> list[AuditRecord]:
        """Every record, in order (see :func:`load`)."""
        return load(self.path, verify=verify, key=self._explicit_key)

    def verify(self, *, head: str | None = None) -> int:
        """Check the chain, the MACs and the head; the number of records (see :func:`verify`)."""
        return verify(self.path, head=head, key=self._explicit_key)

    def _read_tail(self, fd: int) -> tuple[int, str, int]:
        size = os.fstat(fd).st_size
        if self._tail is not None and self._tail[0] == size:
            return self._tail
        data = os.pread(fd, size, 0) if size else b""
        tail = self._tail_of(data)
        # Someone else wrote (or cut) the log since we last did: it must still reach its head,
        # or appending would hide that records were removed.
        _check_reaches_head(self.path, tail[2], lambda n: _line_hash(data, n), self._key,
                            _read_head(self.path))
        return tail

    def _tail_of(self, data: bytes) -> tuple[int, str, int]:
        size = len(data)
        if size == 0:
            return 0, GENESIS, 0
        lines = data.count(b"\n")
        if not data.endswith(b"\n"):
            raise AuditLogError(_torn_message(self.path, lines + 1))
        last = data[: -1].rsplit(b"\n", 1)[-1]
        try:
            prev = json.loads(last)["hash"]
            if not isinstance(prev, str):
                raise TypeError(prev)
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditLogError(
                f"The last line ({lines}) of {self.path} is not an audit record, so no record "
                "can be chained after it; check it with cheq_jupyter.audit.verify(path) or "
                "choose another path.",
                line=lines,
            ) from exc
        return size, prev, lines


@dataclass(frozen=True)
class _Head:
    records: int
    hash: str
    key_id: str
    mac: str


_HEAD_SIZE = 256  # bytes: one sector, written in place with one pwrite


def _write_head(path: Path | str, records: int, record_hash: str, key: bytes) -> None:
    """Overwrite ``<log>.head`` in place with one fixed-size write (never half a head).

    Called under the log's lock after the record's fsync; not fsync-ed itself (a rename or a
    second fsync would double the cost of a record), so after a power loss the head may lag
    the log, which :func:`verify` accepts.  ``path`` is the log's path (or, as a ``str``,
    the head's own path).
    """
    mac = _head_mac(key, records, record_hash)
    # canonical_json of the head, spelt out: this runs once per record.
    text = (f'{{"hash":"{record_hash}","key_id":"{_key_id(key)}","mac":"{mac}",'
            f'"records":{int(records)},"v":{FORMAT_VERSION}}}')
    data = text.encode("ascii").ljust(_HEAD_SIZE - 1) + b"\n"
    target = path if isinstance(path, str) else str(head_path(path))
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def _read_head(path: Path) -> _Head | None:
    """The head kept beside the log at ``path`` (``None`` when there is none)."""
    where = head_path(path)
    try:
        with where.open("rb") as f:
            raw = f.read(_HEAD_SIZE)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditLogError(
            f"Cannot read the audit log's head {where} ({exc.strerror or exc})."
        ) from exc
    try:
        data = json.loads(raw)
        head = _Head(int(data["records"]), str(data["hash"]), str(data["key_id"]),
                     str(data["mac"]))
    except (ValueError, KeyError, TypeError):
        raise AuditLogError(
            f"The audit log's head {where} is not a head record: it was edited or damaged, so "
            "whether records were cut off the log's end cannot be checked."
        ) from None
    return head


def _line_hash(data: bytes, number: int) -> str:
    """The ``hash`` of record ``number`` (1-based) of a log's bytes ('' if unreadable)."""
    try:
        value = json.loads(data.split(b"\n")[number - 1])
        return str(value["hash"]) if isinstance(value, dict) else ""
    except (ValueError, KeyError, IndexError):
        return ""


def _check_reaches_head(
    path: Path, records: int, hash_at: Callable[[int], str], key: bytes, head: _Head | None
) -> None:
    """Raise unless the log (``records`` long; ``hash_at(n)`` is record n's hash) reaches its
    ``head`` (read with the log, under its lock).  A log longer than its head is accepted (a
    crash between the record's fsync and the head's write); the records past the head still
    need their MACs."""
    if head is None:
        if records == 0:
            return
        raise AuditLogError(
            f"The audit log {path} has {records} record(s) but no head file "
            f"({head_path(path).name}), so whether records were cut off its end cannot be "
            "checked: the head was deleted or moved, or the log was written by an older "
            "cheq-jupyter; keep the head beside the log, or move the log aside (it stays "
            "readable with audit.load(path, verify=False)) and start a new one."
        )
    if head.key_id != _key_id(key) or not hmac.compare_digest(
        head.mac, _head_mac(key, head.records, head.hash)
    ):
        raise AuditLogError(
            f"The audit log's head {head_path(path)} is not authenticated by this audit key: "
            "it was forged or edited, or the log was written with another key "
            f"(see {KEY_ENV})."
        )
    if records < head.records:
        raise AuditLogError(
            f"The audit log {path} ends after {records} record(s) but its head says "
            f"{head.records} were written: records were removed from its end (if you removed "
            f"them on purpose, move {head_path(path).name} aside too and start a new log).",
            line=records,
        )
    if head.records and hash_at(head.records) != head.hash:
        raise AuditLogError(
            f"Record {head.records} of the audit log {path} is not the one its head names: "
            "records were replaced.",
            line=head.records,
        )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable too (best effort; not on Windows)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# -- reading and checking --------------------------------------------------------------------


def _snapshot(path: Path) -> tuple[bytes, _Head | None]:
    """The log's bytes and its head, read together under a shared lock (a writer appending
    at the same moment cannot make them disagree)."""
    try:
        with path.open("rb") as f, _file_lock(f.fileno(), shared=True):
            return f.read(), _read_head(path)
    except FileNotFoundError:
        raise AuditLogError(
            f"There is no audit log at {path}; pass the path of an existing cheq-audit.jsonl."
        ) from None
    except OSError as exc:
        raise AuditLogError(f"Cannot read the audit log {path} ({exc.strerror or exc}).") from exc


def _parse(path: Path, data: bytes) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    raw_lines = data.split(b"\n")
    complete = raw_lines[:-1]  # text after the last newline is a torn record (or nothing)
    for number, raw in enumerate(complete, start=1):
        try:
            value = _strict_json(raw)
        except _NotFinite:
            raise AuditLogError(
                f"Line {number} of the audit log {path} holds NaN or an infinite number, which "
                "cheq-jupyter never writes: the log was edited or damaged.",
                line=number,
            ) from None
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise AuditLogError(
                f"Line {number} of the audit log {path} is not a JSON record: the log was edited "
                "or damaged.",
                line=number,
            )
        version = value.get("v")
        if version not in (1, FORMAT_VERSION):
            raise AuditLogError(
                f"Line {number} of the audit log {path} has format version {version!r}; "
                f"this cheq-jupyter reads versions 1 and {FORMAT_VERSION}.",
                line=number,
            )
        missing = [name for name in (_FIELDS if version == 2 else _FIELDS_V1)
                   if name not in value]
        if missing:
            raise AuditLogError(
                f"Line {number} of the audit log {path} is not a cheq-jupyter audit record "
                f"(it has no {', '.join(missing)}): the log was edited or damaged.",
                line=number,
            )
        out.append((number, value))
    if raw_lines[-1]:
        raise AuditLogError(_torn_message(path, len(complete) + 1), line=len(complete) + 1)
    return out


class _NotFinite(ValueError):
    pass


def _not_finite(token: str) -> Any:
    raise _NotFinite(token)


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _NotFinite(token)
    return value


def _strict_json(raw: bytes) -> Any:
    """``json.loads`` that refuses NaN, Infinity and numbers too large for a float."""
    return json.loads(raw, parse_constant=_not_finite, parse_float=_finite_float)


def _check_authentic(
    path: Path, parsed: list[tuple[int, dict[str, Any]]], key: bytes
) -> None:
    """Every record carries a valid MAC under ``key`` (after the chain checked out)."""
    key_id = _key_id(key)
    for number, value in parsed:
        if value["v"] == 1:
            raise AuditLogError(
                f"Line {number} of the audit log {path} was written by an older cheq-jupyter "
                "(format 1, no MAC), so it cannot be authenticated; keep that log as it is "
                "and start a new one.",
                line=number,
            )
        if value["key_id"] != key_id:
            raise AuditLogError(
                f"Line {number} of the audit log {path} was signed with another audit key (key "
                f"id {str(value['key_id'])[:16]!r}, this one is {key_id!r}): verify with the key "
                f"of the user who wrote it ({KEY_ENV}), or it was forged.",
                line=number,
            )
        if not hmac.compare_digest(str(value["mac"]), _mac(key, str(value["hash"]))):
            raise AuditLogError(
                f"Line {number} of the audit log {path} is not authenticated by the audit key "
                "(its MAC does not match): it was forged or edited by someone without the key.",
                line=number,
            )


def _verified(
    where: Path, parsed: list[tuple[int, dict[str, Any]]], head: str | None,
    key: bytes | str | None, kept_head: _Head | None,
) -> None:
    """Chain, then MACs, then the head beside the log (then ``head``, if given)."""
    _check_chain(where, parsed, None)
    audit_key = _audit_key(key)
    _check_authentic(where, parsed, audit_key)
    hashes = [str(value["hash"]) for _, value in parsed]
    _check_reaches_head(where, len(parsed), lambda n: hashes[n - 1], audit_key, kept_head)
    if head is not None:
        _check_chain(where, parsed, head)


def _check_chain(path: Path, parsed: list[tuple[int, dict[str, Any]]], head: str | None) -> None:
    prev = GENESIS
    for number, value in parsed:
        if _content_hash(value) != value["hash"]:
            raise AuditLogError(
                f"Line {number} of the audit log {path} was changed after it was written "
                "(its hash does not match its content).",
                line=number,
            )
        if value["prev_hash"] != prev:
            where = (
                "the first record(s) were deleted" if number == 1 and prev == GENESIS
                else f"a record was deleted, inserted or moved just before line {number}"
            )
            raise AuditLogError(
                f"Line {number} of the audit log {path} does not follow the line before it "
                f"(its prev_hash does not match): {where}.",
                line=number,
            )
        if value["args_hash"] != args_hash(value["tool"], value["arguments"]):
            raise AuditLogError(
                f"Line {number} of the audit log {path} has an args_hash that does not match "
                "its tool and arguments.",
                line=number,
            )
        prev = value["hash"]
    if head is not None and prev != head:
        raise AuditLogError(
            f"The audit log {path} ends at hash {prev[:12]}..., not at the expected head "
            f"{head[:12]}...: records were removed from its end (or it is another log).",
            line=len(parsed),
        )


def load(
    path: str | os.PathLike[str] | None = None, *, verify: bool = True,
    key: bytes | str | None = None,
) -> list[AuditRecord]:
    """Every record of the log at ``path`` (default: :func:`default_path`), in order.

    With ``verify`` (the default) the log is checked first as by :func:`verify` (chain, MACs,
    head) and a bad log raises :class:`~cheq_jupyter.errors.AuditLogError` naming the first
    bad line; ``verify=False`` reads a log that does not verify (lines that are not records
    still raise).
    """
    where = Path(path).expanduser() if path is not None else default_path()
    data, kept_head = _snapshot(where)
    parsed = _parse(where, data)
    if verify:
        _verified(where, parsed, None, key, kept_head)
    return [AuditRecord._from_json(value, number) for number, value in parsed]


def verify(
    path: str | os.PathLike[str] | None = None, *, head: str | None = None,
    key: bytes | str | None = None,
) -> int:
    """Check the log; returns the number of records.

    Raises :class:`~cheq_jupyter.errors.AuditLogError` (with ``.line``) naming the first bad
    line: an edited line, a deleted, inserted or reordered line, a line that is not a record
    (or holds NaN), an incomplete last line left by a crash, a record not authenticated by the
    audit key (``key``, default ``$CHEQ_JUPYTER_AUDIT_KEY`` or the key file: a forged or
    recomputed record), or a log that no longer reaches the head kept beside it (records cut
    off its end).  With ``head`` (an earlier :attr:`AuditLog.head` kept elsewhere), also checks
    that the log still ends there.
    """
    where = Path(path).expanduser() if path is not None else default_path()
    data, kept_head = _snapshot(where)
    parsed = _parse(where, data)
    _verified(where, parsed, head, key, kept_head)
    return len(parsed)


def repair(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Move an incomplete last line (left by a crash mid-write) to ``<path>.torn``.

    Returns the ``.torn`` file's path, or ``None`` when the log had nothing to set aside.  Only
    that incomplete tail is touched: a record cut off while being written never reached the
    loop, so no tool ran on it.  A last line that is a complete record and only lacks its
    newline is kept (the newline is added).  Anything else wrong is left for :func:`verify`.
    """
    where = Path(path).expanduser() if path is not None else default_path()
    data = where.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut == len(data):
        return None
    if _is_complete_record(data[cut:]):
        with where.open("ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        return None
    torn = where.with_name(where.name + ".torn")
    with torn.open("ab") as out:
        out.write(data[cut:] + b"\n")
        out.flush()
        os.fsync(out.fileno())
    with where.open("r+b") as f:
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return torn


def _is_complete_record(raw: bytes) -> bool:
    try:
        value = _strict_json(raw)
    except ValueError:
        return False
    if not isinstance(value, dict):
        return False
    fields = _FIELDS if value.get("v") == FORMAT_VERSION else _FIELDS_V1
    return all(name in value for name in fields)


def to_dataframe(
    path: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> pandas.DataFrame:
    """The log as a pandas ``DataFrame`` (one row per record; ``time`` as UTC datetimes)."""
    try:
        import pandas as pd
    except ImportError:
        raise ConfigurationError(
            "to_dataframe needs pandas, which is not installed; run `pip install pandas`, or "
            "use cheq_jupyter.audit.load(path) for plain records."
        ) from None
    records = load(path, verify=verify)
    columns = [name for name in _FIELDS if name != "v"] + ["line"]
    frame = pd.DataFrame(
        [{**r.to_json(), "line": r.line} for r in records], columns=columns
    )
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame


class AuditTable:
    """Records shown as an HTML table in a notebook (no pandas needed); every cell escaped."""

    COLUMNS = ("time", "run_id", "step", "tool", "status", "decided_by", "note", "arguments",
               "effective_arguments")

    def __init__(self, records: list[AuditRecord]) -> None:
        self.records = records

    def _cell(self, record: AuditRecord, name: str) -> str:
        value = getattr(record, name)
        if isinstance(value, dict):
            value = canonical_json(value)
        return "" if value is None else safe_text(value)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.COLUMNS)
        rows = "".join(
            "<tr>" + "".join(
                f"<td>{html.escape(self._cell(r, c))}</td>" for c in self.COLUMNS
            ) + "</tr>"
            for r in self.records
        )
        return (
            f"<table class='cheq-audit'><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )

    def __repr__(self) -> str:
        lines = [" | ".join(self.COLUMNS)]
        lines += [" | ".join(self._cell(r, c) for c in self.COLUMNS) for r in self.records]
        return "\n".join(lines)


def table(path: str | os.PathLike[str] | None = None, *, verify: bool = True) -> AuditTable:
    """The verified log as a table that renders in a notebook without pandas."""
    return AuditTable(load(path, verify=verify))
