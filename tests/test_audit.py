"""The audit log: what a record holds, the hash chain, crash safety, and replay from a log."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from cheq_jupyter import run_agent
from cheq_jupyter.approval import ApprovalRequest, Decision
from cheq_jupyter.approvers import ReplayApprover
from cheq_jupyter.audit import GENESIS, AuditLog, args_hash, load, repair, to_dataframe, verify
from cheq_jupyter.errors import AuditLogError, ConfigurationError
from cheq_jupyter.testing import FakeMistral, call, text, tool_call, tool_calls

ROOT = Path(__file__).resolve().parents[1]


def request(amount: int = 28, *, customer: str = "cus_1", step: int = 1,
            call_id: str = "call00001", run_id: str = "run-1") -> ApprovalRequest:
    return ApprovalRequest(
        action="refund", summary=f"Refund {amount} EUR", tool_call_id=call_id,
        details={"customer": customer, "amount": amount}, run_id=run_id, step=step,
    )


def fill(path: Path, n: int = 4) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        decision = (Decision.approve(by="card") if i % 2 == 0
                    else Decision.reject("too much", by="console"))
        log.record(request(10 + i, step=i + 1, call_id=f"call{i:05d}"), decision,
                   response_time=1.5)
    return log


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


# -- what is recorded ---------------------------------------------------------------------------


def test_a_record_holds_the_decision_and_chains_to_the_previous_one(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    first = log.record(request(28), Decision.approve(by="card"), response_time=2.25)
    edited = Decision.approve(by="console", modified_details={"customer": "cus_1", "amount": 10})
    second = log.record(request(28, step=2, call_id="call00002"), edited, response_time=0.5)
    third = log.record(request(99, step=3, call_id="call00003"),
                       Decision.reject("Over the limit.", by="cheqpoint"), response_time=30.0)

    records = load(log.path)
    assert records == [first, second, third]
    assert [r.line for r in records] == [1, 2, 3]
    assert (first.tool, first.run_id, first.step, first.tool_call_id) == (
        "refund", "run-1", 1, "call00001")
    assert first.arguments == first.effective_arguments == {"customer": "cus_1", "amount": 28}
    assert (first.status, first.decided_by, first.response_time) == ("approved", "card", 2.25)
    assert second.edited and second.effective_arguments == {"customer": "cus_1", "amount": 10}
    assert third.effective_arguments is None  # nothing ran
    assert (third.status, third.note, third.decided_by) == ("rejected", "Over the limit.",
                                                           "cheqpoint")
    assert first.args_hash == second.args_hash == args_hash(
        "refund", {"amount": 28, "customer": "cus_1"})
    assert third.args_hash != first.args_hash
    assert first.prev_hash == GENESIS
    assert (second.prev_hash, third.prev_hash) == (first.hash, second.hash)
    assert log.head == third.hash
    assert verify(log.path) == 3


def test_each_line_is_plain_json_with_a_readable_time(tmp_path: Path) -> None:
    log = fill(tmp_path / "audit.jsonl", 1)
    data = json.loads(lines(log.path)[0])
    assert data["tool"] == "refund" and data["status"] == "approved"
    assert data["time"].endswith("+00:00")


def test_the_default_path_is_the_working_directory_or_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHEQ_JUPYTER_AUDIT_LOG", raising=False)
    assert AuditLog().path == tmp_path / "cheq-audit.jsonl"
    monkeypatch.setenv("CHEQ_JUPYTER_AUDIT_LOG", str(tmp_path / "elsewhere" / "log.jsonl"))
    log = fill(Path(AuditLog().path), 1)
    assert log.path == tmp_path / "elsewhere" / "log.jsonl" and verify(log.path) == 1


def test_arguments_json_cannot_hold_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    bad = ApprovalRequest(action="refund", summary="", details={"amount": float("nan")},
                          tool_call_id="call00001")
    with pytest.raises(AuditLogError, match="JSON cannot represent"):
        log.record(bad, Decision.approve(by="card"))
    assert not log.path.exists() or log.path.read_bytes() == b""


def test_concurrent_appends_from_threads_keep_the_chain_whole(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    barrier = threading.Barrier(8)

    def writer(n: int) -> None:
        barrier.wait()
        for i in range(25):
            log.record(request(i, call_id=f"c{n}x{i:05d}"), Decision.approve(by=f"t{n}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verify(log.path) == 200


def test_two_processes_appending_to_one_log_keep_the_chain_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    script = textwrap.dedent(f"""
        import sys
        from cheq_jupyter.approval import ApprovalRequest, Decision
        from cheq_jupyter.audit import AuditLog
        log = AuditLog({str(path)!r})
        sys.stdin.readline()  # start together
        for i in range(40):
            r = ApprovalRequest(action="t", summary="", details={{"i": i}},
                                tool_call_id=sys.argv[1] + str(i))
            log.record(r, Decision.approve(by=sys.argv[1]))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, name], stdin=subprocess.PIPE,
                              cwd=ROOT) for name in ("a", "b")]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.close()
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    records = load(path)
    assert len(records) == 80 and {r.decided_by for r in records} == {"a", "b"}


# -- tampering is detected ------------------------------------------------------------------------


def test_an_edited_line_is_named(tmp_path: Path) -> None:
    log = fill(tmp_path / "audit.jsonl")
    content = lines(log.path)
    content[1] = content[1].replace('"status":"rejected"', '"status":"approved"')
    log.path.write_text("".join(content), encoding="utf-8")
    with pytest.raises(AuditLogError, match=r"Line 2 .* was changed after it was written") as err:
        verify(log.path)
    assert err.value.line == 2
    with pytest.raises(AuditLogError):
        load(log.path)  # load verifies by default
    assert load(log.path, verify=False)[1].status == "approved"


def test_an_edit_with_a_recomputed_hash_is_caught_at_the_next_line(tmp_path: Path) -> None:
    from cheq_jupyter.audit import canonical_json

    log = fill(tmp_path / "audit.jsonl")
    content = lines(log.path)
    forged = json.loads(content[1])
    forged["status"], forged["note"] = "approved", None
    body = {k: v for k, v in forged.items() if k not in ("hash", "mac")}
    import hashlib

    forged["hash"] = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    content[1] = canonical_json(forged) + "\n"
    log.path.write_text("".join(content), encoding="utf-8")
    with pytest.raises(AuditLogError, match=r"Line 3 .* does not follow") as err:
        verify(log.path)
    assert err.value.line == 3


def test_a_deleted_line_is_named(tmp_path: Path) -> None:
    log = fill(tmp_path / "audit.jsonl")
    content = lines(log.path)
    del content[1]
    log.path.write_text("".join(content), encoding="utf-8")
    with pytest.raises(AuditLogError, match=r"Line 2 .* deleted, inserted or moved") as err:
        verify(log.path)
    assert err.value.line == 2


def test_a_deleted_first_line_is_named(tmp_path: Path) -> None:
    log = fill(tmp_path / "audit.jsonl")
    log.path.write_text("".join(lines(log.path)[1:]), encoding="utf-8")
    with pytest.raises(AuditLogError, match=r"Line 1 .* first record"):
        verify(log.path)


def test_reordered_lines_are_detected(tmp_path: Path) -> None:
    log = fill(tmp_path / "audit.jsonl")
    content = lines(log.path)
    content[1], content[2] = content[2], content[1]
    log.path.write_text("".join(content), encoding="utf-8")
    with pytest.raises(AuditLogError, match="Line 2 ") as err:
        verify(log.path)
    assert err.value.line == 2


def test_a_cut_off_end_is_detected_by_default_and_against_a_head_kept_elsewhere(
    tmp_path: Path,
) -> None:
    log = fill(tmp_path / "audit.jsonl")
    head = log.head
    assert verify(log.path, head=head) == 4
    log.path.write_text("".join(lines(log.path)[:-1]), encoding="utf-8")
    with pytest.raises(AuditLogError, match="records were removed from its end"):
        verify(log.path)  # the head kept beside the log sees its end removed
    _rehead(log.path)  # a key holder can rebuild the head of the cut log...
    assert verify(log.path) == 3
    with pytest.raises(AuditLogError, match="not at the expected head"):
        verify(log.path, head=head)  # ...which a head kept elsewhere still catches


def test_a_line_that_is_not_a_record_is_named(tmp_path: Path) -> None:
    log = fill(tmp_path / "audit.jsonl", 2)
    content = lines(log.path)
    content.insert(1, "hello\n")
    log.path.write_text("".join(content), encoding="utf-8")
    with pytest.raises(AuditLogError, match=r"Line 2 .* not a JSON record"):
        verify(log.path)


def _rehead(path: Path) -> None:
    """What a key holder can do: rebuild the head of a (cut) log."""
    from cheq_jupyter.audit import _audit_key, _write_head

    records = load(path, verify=False)
    _write_head(path, len(records), records[-1].hash if records else GENESIS, _audit_key())


def test_a_torn_last_line_is_reported_refused_and_repairable(tmp_path: Path) -> None:
    log = fill(tmp_path / "audit.jsonl", 2)
    head_before = log.path.with_name("audit.jsonl.head").read_bytes()
    log.record(request(12, step=3, call_id="call00002"), Decision.approve(by="card"))
    whole = log.path.read_bytes()
    log.path.write_bytes(whole[: len(whole) - 40])  # a crash mid-write of the last line...
    log.path.with_name("audit.jsonl.head").write_bytes(head_before)  # ...before the head
    with pytest.raises(AuditLogError, match=r"Line 3 .* incomplete record") as err:
        verify(log.path)
    assert err.value.line == 3
    fresh = AuditLog(log.path)  # a new kernel will not chain onto half a line
    with pytest.raises(AuditLogError, match="incomplete record"):
        fresh.record(request(), Decision.approve(by="card"))

    torn = repair(log.path)
    assert torn is not None and torn.read_bytes().startswith(b'{"args_hash"')
    assert verify(log.path) == 2
    fresh.record(request(), Decision.approve(by="card"))
    assert verify(log.path) == 3
    assert repair(log.path) is None


def test_a_missing_log_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuditLogError, match="There is no audit log at"):
        load(tmp_path / "nope.jsonl")


def test_to_dataframe_without_pandas_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = fill(tmp_path / "audit.jsonl", 1)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ConfigurationError, match="pip install pandas"):
        to_dataframe(log.path)


def test_to_dataframe_has_one_row_per_record(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    log = fill(tmp_path / "audit.jsonl", 3)
    frame = to_dataframe(log.path)
    assert list(frame["status"]) == ["approved", "rejected", "approved"]
    assert isinstance(frame["time"].iloc[0], pd.Timestamp)


# -- a killed process loses no decision it acted on ---------------------------------------------

_KILLED_RUN = """
import sys
from cheq_jupyter import run_agent
from cheq_jupyter.approval import Decision
from cheq_jupyter.audit import AuditLog
from cheq_jupyter.testing import FakeMistral, text, tool_call

def refund(customer: str, amount: int) -> str:
    \"\"\"Refund money to a customer.\"\"\"
    print("TOOL RUNNING", flush=True)
    sys.stdin.read()  # the tool is busy until the process is killed
    return "refunded"

def reviewer(request):
    return Decision.approve(by="reviewer", note="go ahead")

script = [tool_call("refund", {"customer": "cus_1", "amount": 28}), text("done")]
with FakeMistral(script) as fake:
    run_agent("refund cus_1", tools=[refund], approver=reviewer, client=fake.client(),
              recorder=AuditLog(sys.argv[1]))
"""


def test_kill_9_after_a_decision_leaves_that_decision_in_the_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, str(path)], cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the run never reached the tool"
        assert proc.stdout.readline() == b"TOOL RUNNING\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    [record] = load(path)
    assert (record.tool, record.status, record.decided_by, record.note) == (
        "refund", "approved", "reviewer", "go ahead")
    assert record.effective_arguments == {"customer": "cus_1", "amount": 28}


# -- replay ------------------------------------------------------------------------------------


class Ledger:
    def __init__(self) -> None:
        self.ran: list[dict[str, Any]] = []

    def refund(self, customer: str, amount: int) -> str:
        """Refund money to a customer."""
        self.ran.append({"customer": customer, "amount": amount})
        return "refunded"


def test_replay_re_applies_recorded_decisions_and_rejects_new_calls(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record(request(10), Decision.approve(by="card"))
    log.record(request(20, call_id="call00002"), Decision.reject("Not this one.", by="card"))
    log.record(request(30, call_id="call00003"),
               Decision.approve(by="console", modified_details={"customer": "cus_1",
                                                                "amount": 25}))
    log.record(request(40, call_id="call00004"), Decision.timed_out("nobody", by="card"))
    replay = ReplayApprover(log.path)
    assert replay.recorded == 4

    same_keys_other_order = ApprovalRequest(
        action="refund", summary="", details={"amount": 10, "customer": "cus_1"},
        tool_call_id="new00001")
    approved = replay(same_keys_other_order)
    assert approved.status == "approved" and approved.decided_by == "replay"
    assert "approved by card" in (approved.decision_note or "")
    assert "audit line 1" in (approved.decision_note or "")

    rejected = replay(request(20))
    assert rejected.status == "rejected" and "Not this one." in (rejected.decision_note or "")

    edited = replay(request(30))
    assert edited.approved and edited.modified_details == {"customer": "cus_1", "amount": 25}

    timed_out = replay(request(40))
    assert timed_out.status == "rejected" and "timed out" in (timed_out.decision_note or "")

    new = replay(request(50))
    assert new.status == "rejected"
    assert "No recorded decision" in (new.decision_note or "")
    assert "no reviewer was present" in (new.decision_note or "")

    # Each recorded approval is used once: the same refund asked again is not approved.
    again = replay(request(10))
    assert again.status == "rejected" and replay.remaining == 0


def test_replay_only_of_one_run_and_never_of_its_own_records(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.record(request(10, run_id="a"), Decision.approve(by="card"))
    log.record(request(10, run_id="b"), Decision.approve(by="replay"))
    assert ReplayApprover(log.path).recorded == 1
    assert ReplayApprover(log.path, run_id="b").recorded == 0


def test_replay_refuses_a_tampered_log(tmp_path: Path) -> None:
    log = fill(tmp_path / "audit.jsonl")
    content = lines(log.path)
    content[1] = content[1].replace('"status":"rejected"', '"status":"approved"')
    log.path.write_text("".join(content), encoding="utf-8")
    with pytest.raises(AuditLogError, match="Line 2"):
        ReplayApprover(log.path)


def test_replaying_a_recorded_run_re_runs_exactly_the_approved_calls(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    small = {"customer": "cus_1", "amount": 10}
    large = {"customer": "cus_2", "amount": 900}

    def reviewer(r: ApprovalRequest) -> Decision:
        if r.details["amount"] < 100:
            return Decision.approve(by="card")
        return Decision.reject("Too large.", by="card")

    first = Ledger()
    script = [tool_calls(call("refund", small), call("refund", large)), text("done")]
    with FakeMistral(script) as fake:
        run_agent("refunds", tools=[first.refund], approver=reviewer, client=fake.client(),
                  recorder=AuditLog(path))
    assert first.ran == [small]

    second = Ledger()
    new = {"customer": "cus_3", "amount": 5}
    script = [tool_calls(call("refund", small), call("refund", large)),
              tool_call("refund", new), text("done")]
    with FakeMistral(script) as fake:
        result = run_agent("refunds", tools=[second.refund], approver=ReplayApprover(path),
                           client=fake.client(), recorder=AuditLog(path))
    assert second.ran == [small]  # not the rejected one, not the new one
    assert [d.status for d in result.decisions] == ["approved", "rejected", "rejected"]
    assert {d.decided_by for d in result.decisions} == {"replay"}
    assert "No recorded decision" in (result.decisions[2].decision_note or "")
    records = load(path)
    assert [r.decided_by for r in records] == ["card", "card", "replay", "replay", "replay"]


def test_no_record_is_written_when_the_log_path_is_unwritable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AuditLogError, match="Cannot open the audit log"):
        AuditLog(blocker / "audit.jsonl").record(request(), Decision.approve(by="card"))


def test_log_file_is_fsynced_before_record_returns(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    log = AuditLog(tmp_path / "audit.jsonl")

    def spy(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    log.record(request(), Decision.approve(by="card"))
    assert synced and synced[0] == log.path.stat().st_size


def test_table_renders_records_escaped_without_pandas(tmp_path: Path) -> None:
    from cheq_jupyter.approval import ApprovalRequest, Decision
    from cheq_jupyter.audit import AuditLog, table

    log = AuditLog(tmp_path / "a.jsonl")
    request = ApprovalRequest("send", "s", {"body": "<script>x</script>"}, "abcdefghi")
    log.record(request, Decision.reject("<b>no</b>", by="card"), response_time=1.0)
    rendered = table(log.path)._repr_html_()
    assert "<script>" not in rendered and "&lt;script&gt;" in rendered
    assert "&lt;b&gt;no&lt;/b&gt;" in rendered and "<td>rejected</td>" in rendered
    assert "rejected" in repr(table(log.path)).splitlines()[1]
