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
arguments}``), ``prev_hash`` and ``hash``.

The chain: ``hash`` is the SHA-256 of the record's canonical JSON without ``hash``, and
``prev_hash`` is the previous record's ``hash`` (:data:`GENESIS` for the first).  Editing a
line breaks its ``hash``; deleting, inserting or reordering lines breaks the next
``prev_hash``.  :func:`verify` names the first bad line.  A chain cannot tell that its *last*
records were cut off: keep :attr:`AuditLog.head` somewhere else (the notebook's output, a
ticket) and pass it to ``verify(path, head=...)`` to check that too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import html
import json
import os
import threading
from collections.abc import Iterator, Mapping
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
    "PATH_ENV",
    "AuditLog",
    "AuditRecord",
    "AuditTable",
    "args_hash",
    "canonical_json",
    "default_path",
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
FORMAT_VERSION = 1

_FIELDS: tuple[str, ...] = (
    "v", "time", "run_id", "step", "tool", "tool_call_id", "arguments", "effective_arguments",
    "status", "note", "decided_by", "response_time", "args_hash", "prev_hash", "hash",
)


def default_path() -> Path:
    """``$CHEQ_JUPYTER_AUDIT_LOG``, else ``cheq-audit.jsonl`` in the working directory."""
    configured = os.environ.get(PATH_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.cwd() / DEFAULT_FILENAME


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
        values = {name: data[name] for name in _FIELDS if name != "v"}
        return cls(**values, line=line)


def _content_hash(data: Mapping[str, Any]) -> str:
    return _sha256(canonical_json({k: v for k, v in data.items() if k != "hash"}))


def _build(
    request: ApprovalRequest, decision: Decision, response_time: float | None, prev: str
) -> AuditRecord:
    # Normalise through JSON so the record holds exactly what a reader will load back.
    arguments = json.loads(canonical_json(dict(request.details)))
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
        "args_hash": args_hash(request.action, arguments),
        "prev_hash": prev,
    }
    body["hash"] = _content_hash(body)
    return AuditRecord._from_json(body, 0)


# -- writing ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(fd: int) -> Iterator[None]:
    """An exclusive lock between processes appending to the same log (POSIX; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
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
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_path()
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
                    rec = _build(request, decision, response_time, prev)
                    data = (canonical_json(rec.to_json()) + "\n").encode("utf-8")
                    _write_all(fd, data)
                    os.fsync(fd)
                    self._tail = (size + len(data), rec.hash, lines + 1)
            except OSError as exc:
                raise AuditLogError(
                    f"Could not write to the audit log {self.path} ({exc.strerror or exc}); "
                    "the decision was not recorded, so the call does not run."
                ) from exc
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)
            return dataclasses.replace(rec, line=lines + 1)

    @property
    def head(self) -> str:
        """The hash of the last record (:data:`GENESIS` for an empty or missing log)."""
        if not self.path.exists():
            return GENESIS
        records = load(self.path, verify=False)
        return records[-1].hash if records else GENESIS

    def records(self, *, verify: bool = True) -> list[AuditRecord]:
        """Every record, in order (see :func:`load`)."""
        return load(self.path, verify=verify)

    def verify(self, *, head: str | None = None) -> int:
        """Check the chain; the number of records (see :func:`verify`)."""
        return verify(self.path, head=head)

    def _read_tail(self, fd: int) -> tuple[int, str, int]:
        size = os.fstat(fd).st_size
        if self._tail is not None and self._tail[0] == size:
            return self._tail
        if size == 0:
            return 0, GENESIS, 0
        data = os.pread(fd, size, 0)
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


def _parse(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AuditLogError(
            f"There is no audit log at {path}; pass the path of an existing cheq-audit.jsonl."
        ) from None
    except OSError as exc:
        raise AuditLogError(f"Cannot read the audit log {path} ({exc.strerror or exc}).") from exc
    out: list[tuple[int, dict[str, Any]]] = []
    raw_lines = data.split(b"\n")
    complete = raw_lines[:-1]  # text after the last newline is a torn record (or nothing)
    for number, raw in enumerate(complete, start=1):
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise AuditLogError(
                f"Line {number} of the audit log {path} is not a JSON record: the log was edited "
                "or damaged.",
                line=number,
            )
        missing = [name for name in _FIELDS if name not in value]
        if missing:
            raise AuditLogError(
                f"Line {number} of the audit log {path} is not a cheq-jupyter audit record "
                f"(it has no {', '.join(missing)}): the log was edited or damaged.",
                line=number,
            )
        if value["v"] != FORMAT_VERSION:
            raise AuditLogError(
                f"Line {number} of the audit log {path} has format version {value['v']!r}; "
                f"this cheq-jupyter reads version {FORMAT_VERSION}.",
                line=number,
            )
        out.append((number, value))
    if raw_lines[-1]:
        raise AuditLogError(_torn_message(path, len(complete) + 1), line=len(complete) + 1)
    return out


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


def load(path: str | os.PathLike[str] | None = None, *, verify: bool = True) -> list[AuditRecord]:
    """Every record of the log at ``path`` (default: :func:`default_path`), in order.

    With ``verify`` (the default) the hash chain is checked first and a broken chain raises
    :class:`~cheq_jupyter.errors.AuditLogError` naming the first bad line; ``verify=False``
    reads a log whose chain is broken (lines that are not records still raise).
    """
    where = Path(path).expanduser() if path is not None else default_path()
    parsed = _parse(where)
    if verify:
        _check_chain(where, parsed, None)
    return [AuditRecord._from_json(value, number) for number, value in parsed]


def verify(path: str | os.PathLike[str] | None = None, *, head: str | None = None) -> int:
    """Check the log's hash chain; returns the number of records.

    Raises :class:`~cheq_jupyter.errors.AuditLogError` (with ``.line``) naming the first bad
    line: an edited line, a deleted, inserted or reordered line, a line that is not a record,
    or an incomplete last line left by a crash.  With ``head`` (an earlier
    :attr:`AuditLog.head`), also checks that the log still ends there.
    """
    where = Path(path).expanduser() if path is not None else default_path()
    parsed = _parse(where)
    _check_chain(where, parsed, head)
    return len(parsed)


def repair(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Move an incomplete last line (left by a crash mid-write) to ``<path>.torn``.

    Returns the ``.torn`` file's path, or ``None`` when the log had nothing to repair.  Only
    that incomplete tail is touched: a record cut off while being written never reached the
    loop, so no tool ran on it.  Anything else wrong is left for :func:`verify` to report.
    """
    where = Path(path).expanduser() if path is not None else default_path()
    data = where.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut == len(data):
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
