"""Audit-log tampering by someone who can edit the log but does not hold the audit key.

The attacker knows the format and the hash recipe (the code is open), so every forgery below
recomputes hashes and chains correctly; only the key, kept outside the log, is out of reach.
Each must fail :func:`verify` by default (no extra argument) and make replay refuse the log,
so a forged approval never runs a tool.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cheq_jupyter import run_agent
from cheq_jupyter.approval import ApprovalRequest, Decision
from cheq_jupyter.approvers import ReplayApprover
from cheq_jupyter.audit import (
    KEY_ENV,
    AuditLog,
    canonical_json,
    head_path,
    key_path,
    load,
    repair,
    verify,
)
from cheq_jupyter.errors import AuditLogError
from cheq_jupyter.testing import FakeMistral, text, tool_call


@pytest.fixture(autouse=True)
def audit_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A key of our own for each test (as CI would set it); no key file is touched."""
    key = secrets.token_hex(32)
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return key


def request(amount: int, step: int = 1) -> ApprovalRequest:
    return ApprovalRequest(action="refund", summary=f"refund {amount}", tool_call_id=f"call{step:05d}",
                           details={"customer": "cus_1", "amount": amount}, run_id="run1",
                           step=step)


def written_log(path: Path, n: int = 4) -> AuditLog:
    """n decisions: small refunds approved, the last (a big one) rejected."""
    log = AuditLog(path)
    for i in range(n - 1):
        log.record(request(10 + i, i + 1), Decision.approve(by="card"), response_time=1.0)
    log.record(request(5000, n), Decision.reject("far too much", by="card"), response_time=2.0)
    return log


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(canonical_json(r) + "\n" for r in records), encoding="utf-8")


def rehash(record: dict[str, Any]) -> dict[str, Any]:
    """What a forger who read the source does: recompute the record's hash."""
    body = {k: v for k, v in record.items() if k not in ("hash", "mac")}
    record["hash"] = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    return record


def forged_approval(records: list[dict[str, Any]], mac: str) -> dict[str, Any]:
    """A copy of the rejected record, approved, chained after the last one."""
    forged = dict(records[-1])
    forged.update(status="approved", note=None, decided_by="card",
                  effective_arguments=forged["arguments"], prev_hash=records[-1]["hash"],
                  tool_call_id="call99999", step=forged["step"] + 1)
    rehash(forged)
    forged["mac"] = mac
    return forged


def forge_head(path: Path, records: int, last_hash: str, mac: str) -> None:
    head = {"v": 2, "records": records, "hash": last_hash, "key_id": lines(path)[0]["key_id"],
            "mac": mac}
    head_path(path).write_text(canonical_json(head) + "\n", encoding="utf-8")


# -- tampering: each one must be refused by default ---------------------------------------------


def cut_last(path: Path) -> None:
    write(path, lines(path)[:-1])


def cut_two(path: Path) -> None:
    write(path, lines(path)[:-2])


def empty_the_log(path: Path) -> None:
    path.write_bytes(b"")


def delete_the_head(path: Path) -> None:
    head_path(path).unlink()


def cut_and_delete_head(path: Path) -> None:
    cut_last(path)
    head_path(path).unlink()


def append_forged_random_mac(path: Path) -> None:
    records = lines(path)
    write(path, [*records, forged_approval(records, secrets.token_hex(32))])


def append_forged_copied_mac(path: Path) -> None:
    records = lines(path)
    write(path, [*records, forged_approval(records, records[0]["mac"])])


def append_forged_and_its_head(path: Path) -> None:
    records = lines(path)
    forged = forged_approval(records, records[-1]["mac"])
    write(path, [*records, forged])
    forge_head(path, len(records) + 1, forged["hash"], secrets.token_hex(32))


def append_forged_with_own_key(path: Path) -> None:
    """The forger signs with a key of their own and says so in key_id."""
    own = b"attacker-key-0123456789abcdef"
    records = lines(path)
    forged = forged_approval(records, "")
    forged["key_id"] = hashlib.sha256(b"cheq-jupyter audit key id\0" + own).hexdigest()[:16]
    rehash(forged)
    forged["mac"] = hmac.new(own, f"cheq-audit-record:{forged['hash']}".encode(),
                             hashlib.sha256).hexdigest()
    write(path, [*records, forged])


def append_forged_own_key_same_key_id(path: Path) -> None:
    own = b"attacker-key-0123456789abcdef"
    records = lines(path)
    forged = forged_approval(records, "")
    forged["mac"] = hmac.new(own, f"cheq-audit-record:{forged['hash']}".encode(),
                             hashlib.sha256).hexdigest()
    write(path, [*records, forged])


def flip_last_to_approved(path: Path) -> None:
    """No next line to break the chain: only the MAC can tell."""
    records = lines(path)
    last = records[-1]
    last.update(status="approved", note=None, effective_arguments=last["arguments"])
    rehash(last)
    write(path, records)
    forge_head(path, len(records), last["hash"], secrets.token_hex(32))


def flip_last_keep_head(path: Path) -> None:
    records = lines(path)
    last = records[-1]
    last.update(status="approved", note=None, effective_arguments=last["arguments"])
    rehash(last)
    write(path, records)


def raise_the_amount_everywhere(path: Path) -> None:
    """Edit an approved record's arguments and rebuild the whole chain after it."""
    records = lines(path)
    records[0]["arguments"]["amount"] = records[0]["effective_arguments"]["amount"] = 9999
    records[0]["args_hash"] = hashlib.sha256(canonical_json(
        {"tool": "refund", "arguments": records[0]["arguments"]}).encode()).hexdigest()
    prev = "0" * 64
    for record in records:
        record["prev_hash"] = prev
        prev = rehash(record)["hash"]
    write(path, records)


def downgrade_to_format_1(path: Path) -> None:
    """Rewrite the log in the old unauthenticated format, with a fresh chain, no head."""
    prev = "0" * 64
    out = []
    for record in lines(path):
        record = {k: v for k, v in record.items() if k not in ("key_id", "mac")}
        record.update(v=1, prev_hash=prev)
        prev = rehash(record)["hash"]
        out.append(record)
    out[-1].update(status="approved", note=None, effective_arguments=out[-1]["arguments"])
    rehash(out[-1])
    write(path, out)
    head_path(path).unlink()


def append_a_format_1_line(path: Path) -> None:
    records = lines(path)
    forged = {k: v for k, v in forged_approval(records, "").items() if k not in ("key_id", "mac")}
    forged["v"] = 1
    write(path, [*records, rehash(forged)])


def drop_the_mac_field(path: Path) -> None:
    records = lines(path)
    del records[-1]["mac"]
    write(path, records)


def swap_in_another_logs_head(path: Path) -> None:
    other = written_log(path.with_name("other.jsonl"), 6)
    head_path(path).write_bytes(head_path(other.path).read_bytes())


def lower_the_head_count(path: Path) -> None:
    head = json.loads(head_path(path).read_text())
    head["records"] -= 1
    head_path(path).write_text(canonical_json(head))


def garble_the_head(path: Path) -> None:
    head_path(path).write_text("not a head")


def reorder_last_two(path: Path) -> None:
    records = lines(path)
    records[-1], records[-2] = records[-2], records[-1]
    write(path, records)


TAMPERING: dict[str, Callable[[Path], None]] = {
    f.__name__: f for f in (
        cut_last, cut_two, empty_the_log, delete_the_head, cut_and_delete_head,
        append_forged_random_mac, append_forged_copied_mac, append_forged_and_its_head,
        append_forged_with_own_key, append_forged_own_key_same_key_id, flip_last_to_approved,
        flip_last_keep_head, raise_the_amount_everywhere, downgrade_to_format_1,
        append_a_format_1_line, drop_the_mac_field, swap_in_another_logs_head,
        lower_the_head_count, garble_the_head, reorder_last_two,
    )
}


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_tampering_fails_the_default_verify(tamper: str, tmp_path: Path) -> None:
    log = written_log(tmp_path / "audit.jsonl")
    assert verify(log.path) == 4
    TAMPERING[tamper](log.path)
    with pytest.raises(AuditLogError):
        verify(log.path)
    with pytest.raises(AuditLogError):
        load(log.path)


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_replay_refuses_a_tampered_log_and_runs_nothing(tamper: str, tmp_path: Path) -> None:
    log = written_log(tmp_path / "audit.jsonl")
    TAMPERING[tamper](log.path)
    ran: list[int] = []

    def refund(customer: str, amount: int) -> str:
        """Refund money."""
        ran.append(amount)
        return "refunded"

    script = [tool_call("refund", {"customer": "cus_1", "amount": 5000}), text("done")]
    with FakeMistral(script) as fake, pytest.raises(AuditLogError):
        run_agent("refund", tools=[refund], approver=ReplayApprover(log.path),
                  client=fake.client())
    assert ran == []


def test_replay_of_an_intact_log_still_replays(tmp_path: Path) -> None:
    log = written_log(tmp_path / "audit.jsonl")
    ran: list[int] = []

    def refund(customer: str, amount: int) -> str:
        """Refund money."""
        ran.append(amount)
        return "refunded"

    script = [tool_call("refund", {"customer": "cus_1", "amount": 5000}),
              tool_call("refund", {"customer": "cus_1", "amount": 10}), text("done")]
    with FakeMistral(script) as fake:
        run_agent("refund", tools=[refund], approver=ReplayApprover(log.path),
                  client=fake.client())
    assert ran == [10]  # the rejected 5000 stays rejected, the approved 10 is approved again


@pytest.mark.parametrize("tamper", ["cut_last", "cut_two", "empty_the_log", "delete_the_head",
                                    "swap_in_another_logs_head", "garble_the_head"])
def test_recording_refuses_to_append_to_a_cut_log(tamper: str, tmp_path: Path) -> None:
    """Appending would rebuild the head and hide the cut: the record is refused instead."""
    written_log(tmp_path / "audit.jsonl")
    path = tmp_path / "audit.jsonl"
    TAMPERING[tamper](path)
    before = path.read_bytes()
    with pytest.raises(AuditLogError):
        AuditLog(path).record(request(1, 9), Decision.approve(by="card"))
    assert path.read_bytes() == before


def test_recording_refuses_when_the_log_was_deleted_but_its_head_remains(tmp_path: Path) -> None:
    log = written_log(tmp_path / "audit.jsonl")
    log.path.unlink()
    with pytest.raises(AuditLogError, match="removed from its end"):
        AuditLog(log.path).record(request(1, 9), Decision.approve(by="card"))


def test_an_interleaved_writer_keeps_the_head_current(tmp_path: Path) -> None:
    """Two AuditLog objects on one file (two kernels): both keep chain and head whole."""
    path = tmp_path / "audit.jsonl"
    first, second = AuditLog(path), AuditLog(path)
    for i in range(6):
        (first if i % 2 else second).record(request(i, i + 1), Decision.approve(by="card"))
    assert verify(path) == 6


# -- the key ---------------------------------------------------------------------------------


def test_the_key_file_is_made_once_private_and_never_written_to_the_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(KEY_ENV)
    log = written_log(tmp_path / "audit.jsonl")
    where = key_path()
    assert where == tmp_path / "config" / "cheq-jupyter" / "audit.key"
    assert stat.S_IMODE(where.stat().st_mode) == 0o600
    assert stat.S_IMODE(where.parent.stat().st_mode) == 0o700
    key = where.read_bytes().strip()
    assert len(key) >= 32
    written_log(tmp_path / "second.jsonl")
    assert where.read_bytes().strip() == key  # made once, then reused
    for file in (log.path, head_path(log.path)):
        assert key not in file.read_bytes()
    assert verify(log.path) == 4


def test_another_users_key_cannot_verify_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, audit_key: str
) -> None:
    log = written_log(tmp_path / "audit.jsonl")
    monkeypatch.setenv(KEY_ENV, secrets.token_hex(32))
    with pytest.raises(AuditLogError, match="another audit key") as info:
        verify(log.path)
    assert info.value.line == 1
    assert verify(log.path, key=audit_key) == 4  # the writer's key still verifies it


def test_an_explicit_key_verifies_what_it_wrote(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    log = AuditLog(tmp_path / "audit.jsonl", key=key)
    log.record(request(1), Decision.approve(by="card"))
    assert log.verify() == 1 and verify(log.path, key=key) == 1
    with pytest.raises(AuditLogError):
        verify(log.path)  # the environment's key is another one


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o622])
def test_a_key_file_others_can_read_or_write_is_refused(
    mode: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(KEY_ENV)
    where = key_path()
    where.parent.mkdir(parents=True)
    where.write_text(secrets.token_hex(32))
    where.chmod(mode)
    path = tmp_path / "audit.jsonl"
    with pytest.raises(AuditLogError, match="chmod 600"):
        AuditLog(path).record(request(1), Decision.approve(by="card"))
    assert not path.exists() or path.read_bytes() == b""


@pytest.mark.parametrize("value", ["short", "  x  "])
def test_a_short_key_in_the_environment_is_refused(
    value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(AuditLogError, match=KEY_ENV):
        AuditLog(tmp_path / "a.jsonl").record(request(1), Decision.approve(by="card"))


# -- damage that is not forgery ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
@pytest.mark.parametrize("line", [1, 3])
def test_a_non_finite_number_edited_into_a_line_is_named(
    value: str, line: int, tmp_path: Path
) -> None:
    log = written_log(tmp_path / "audit.jsonl")
    content = log.path.read_text(encoding="utf-8").splitlines(keepends=True)
    content[line - 1] = content[line - 1].replace('"response_time":1.0', f'"response_time":{value}')
    log.path.write_text("".join(content), encoding="utf-8")
    for check in (verify, load):
        with pytest.raises(AuditLogError, match=f"Line {line} .*NaN or an infinite") as info:
            check(log.path)
        assert info.value.line == line


def test_repair_keeps_a_complete_last_record_that_lacks_its_newline(tmp_path: Path) -> None:
    log = written_log(tmp_path / "audit.jsonl")
    log.path.write_bytes(log.path.read_bytes()[:-1])  # a crash before the newline reached disk
    with pytest.raises(AuditLogError, match=r"Line 4 .* incomplete"):
        verify(log.path)
    assert repair(log.path) is None
    assert verify(log.path) == 4
    assert load(log.path)[-1].status == "rejected"
    assert not log.path.with_name("audit.jsonl.torn").exists()


def test_repair_sets_aside_a_torn_record_after_a_crash_before_the_head(tmp_path: Path) -> None:
    log = written_log(tmp_path / "audit.jsonl", 3)
    head_before = head_path(log.path).read_bytes()
    log.record(request(7, 9), Decision.approve(by="card"))
    whole = log.path.read_bytes()
    log.path.write_bytes(whole[:-30])  # the 4th record was being written...
    head_path(log.path).write_bytes(head_before)  # ...so its head was never updated
    torn = repair(log.path)
    assert torn is not None and torn.exists()
    assert verify(log.path) == 3


def test_a_head_that_lags_after_a_crash_is_accepted(tmp_path: Path) -> None:
    """The record is fsync-ed before the head is written: a crash between leaves the head one
    record behind, which is not a forgery (the extra record still needs its MAC)."""
    log = written_log(tmp_path / "audit.jsonl", 3)
    head_before = head_path(log.path).read_bytes()
    log.record(request(7, 9), Decision.approve(by="card"))
    head_path(log.path).write_bytes(head_before)
    assert verify(log.path) == 4
    log.record(request(8, 10), Decision.approve(by="card"))  # and appending goes on
    assert verify(log.path) == 5



@pytest.mark.parametrize("tamper", ["cut_last", "append_forged_copied_mac", "flip_last_keep_head"])
def test_the_magic_refuses_to_replay_a_tampered_log_in_one_line(
    tamper: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    log = written_log(tmp_path / "audit.jsonl")
    TAMPERING[tamper](log.path)
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell()
    try:
        shell.run_line_magic("load_ext", "cheq_jupyter")
        shell.run_cell(
            "ran = []\n"
            "def refund(customer: str, amount: int) -> str:\n"
            "    '''Refund money.'''\n"
            "    ran.append(amount)\n"
            "    return 'refunded'\n"
        )
        with FakeMistral([tool_call("refund", {"customer": "cus_1", "amount": 5000}),
                          text("done")]) as fake:
            monkeypatch.setenv("MISTRAL_API_KEY", fake.api_key)
            monkeypatch.setenv("MISTRAL_SERVER_URL", fake.url)
            result = shell.run_cell(
                f"%%mistral_agent -t refund --approver replay --audit {log.path}\nrefund")
        assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
        assert "audit log" in str(result.error_in_exec)
        assert shell.user_ns["ran"] == [] and fake.requests == []
    finally:
        InteractiveShell.clear_instance()


def test_processes_making_the_key_at_once_share_one_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Six processes start on a machine with no key yet: one key is made, all use it."""
    import subprocess
    import sys

    monkeypatch.delenv(KEY_ENV)
    code = (
        "import sys\n"
        "from cheq_jupyter.approval import ApprovalRequest, Decision\n"
        "from cheq_jupyter.audit import AuditLog\n"
        "log = AuditLog(sys.argv[1])\n"
        "log.record(ApprovalRequest(action='t', summary='', details={}, tool_call_id='x'),\n"
        "           Decision.approve(by='card'))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"log{i}.jsonl")],
                              env=os.environ.copy()) for i in range(6)]
    assert [p.wait(60) for p in procs] == [0] * 6
    for i in range(6):
        assert verify(tmp_path / f"log{i}.jsonl") == 1  # all signed with the one key on disk
    assert [p.name for p in key_path().parent.iterdir()] == ["audit.key"]  # no drafts left


def test_an_unsafe_key_file_stops_the_magic_before_anyone_is_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The reviewer's decision would be lost (it cannot be recorded): nobody is asked."""
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.delenv(KEY_ENV)
    where = key_path()
    where.parent.mkdir(parents=True)
    where.write_text(secrets.token_hex(32))
    where.chmod(0o644)
    monkeypatch.chdir(tmp_path)
    shell = InteractiveShell()
    try:
        shell.run_line_magic("load_ext", "cheq_jupyter")
        shell.run_cell("def refund(amount: int) -> str:\n    '''Refund.'''\n    return 'ok'\n")
        with FakeMistral([tool_call("refund", {"amount": 1}), text("done")]) as fake:
            monkeypatch.setenv("MISTRAL_API_KEY", fake.api_key)
            monkeypatch.setenv("MISTRAL_SERVER_URL", fake.url)
            result = shell.run_cell("%%mistral_agent -t refund --approver policy\nrefund")
        assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
        assert "chmod 600" in str(result.error_in_exec)
        assert fake.requests == []
    finally:
        InteractiveShell.clear_instance()
