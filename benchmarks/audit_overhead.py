"""Audit log cost: one ``AuditLog.record`` vs a bare fsynced JSONL append, and a 20-call run
with and without the log.

Every variant runs in this process, alternating, in one temporary directory (same disk), so
noise hits all of them.  ``AuditLog.record`` builds the record, chains it, signs it (HMAC
under the audit key), appends and fsyncs it, then rewrites the head beside the log.
Targets: the chain, signature, head and record building cost at most 50 % on top of
the bare durable append (``record`` <= 1.5 x), and recording every decision costs a run at
most 10 % (<= 1.10 x) when the model answers in ~20 ms (a loopback model answers in ~2 ms,
which the table also shows: there the fsync per decision dominates).

    python benchmarks/audit_overhead.py [--records 200] [--rounds 9] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _table import Row, print_table

from cheq_jupyter import approve_all, run_agent
from cheq_jupyter.approval import ApprovalRequest, Decision
from cheq_jupyter.audit import AuditLog
from cheq_jupyter.testing import FakeMistral, text, tool_call

APPEND_TARGET = 1.5
RUN_TARGET = 1.10


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def request(i: int) -> ApprovalRequest:
    return ApprovalRequest(action="refund", summary="Refund", tool_call_id=f"c{i:08d}",
                           details={"customer": f"cus_{i}", "amount": i}, run_id="r", step=i)


class BareLog:
    """A careful hand-written durable log: one JSON line, flush, fsync; no chain."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, r: ApprovalRequest, decision: Decision, *, response_time: float) -> None:
        line = json.dumps({"tool": r.action, "arguments": r.details, "status": decision.status,
                           "by": decision.decided_by, "response_time": response_time})
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def appends(directory: Path, n: int) -> tuple[list[float], list[float]]:
    """Per-append times of both logs, interleaved one by one so disk noise hits both."""
    bare, ours = BareLog(directory / "bare.jsonl"), AuditLog(directory / "audit.jsonl")
    decision = Decision.approve(by="card")
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(n):
        for log, into in ((bare, times[0]), (ours, times[1])):
            started = time.perf_counter()
            log.record(request(i), decision, response_time=0.1)
            into.append(time.perf_counter() - started)
    return times


def run(directory: Path, calls: int, delay: float, audited: bool) -> float:
    script = [tool_call("add", {"a": i, "b": i}) for i in range(calls)] + [text("done")]

    def slow(body: dict[str, Any]) -> Any:
        time.sleep(delay)  # stands in for the model's latency; not a synchronisation
        return script[sum(1 for m in body["messages"] if m["role"] == "tool")]

    path = directory / f"run-{time.monotonic_ns()}.jsonl"
    with FakeMistral(slow if delay else script) as fake:
        client = fake.client()
        started = time.perf_counter()
        run_agent("add", tools=[add], approver=approve_all, client=client, max_steps=calls + 1,
                  recorder=AuditLog(path) if audited else None)
        elapsed = time.perf_counter() - started
    if path.exists():
        path.unlink()
    return elapsed


def rows(quick: bool = False, *, records: int = 200, rounds: int | None = None,
         calls: int = 20) -> list[Row]:
    """Both comparisons, alternating, in one temporary directory (``quick``: 3 rounds)."""
    rounds = rounds or (3 if quick else 9)
    out: list[Row] = []
    with tempfile.TemporaryDirectory(dir=os.getcwd(), prefix=".bench-audit-") as tmp:
        directory = Path(tmp)
        appends(directory, 5)
        bare, ours = appends(directory, records * rounds)
        b, o = statistics.median(bare) * 1e6, statistics.median(ours) * 1e6
        out.append(Row("audit: one AuditLog.record (chain + HMAC + head + fsync)", o, "us",
                       f"bare JSONL append + fsync (median of {len(bare)})", b, o / b,
                       f"ratio <= {APPEND_TARGET}", o / b <= APPEND_TARGET))
        for delay in (0.0, 0.02):
            plain, logged = [], []
            for _ in range(rounds):
                plain.append(run(directory, calls, delay, False))
                logged.append(run(directory, calls, delay, True))
            p, q = statistics.median(plain) * 1000, statistics.median(logged) * 1000
            model = f"model answers in {'~2' if not delay else '~20'} ms"
            out.append(Row(f"audit: {calls}-call run with AuditLog, {model}", q, "ms",
                           f"same run, no audit log (median of {rounds})", p, q / p,
                           f"ratio <= {RUN_TARGET}" if delay else "",
                           q / p <= RUN_TARGET if delay else None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=None, help="default 9 (--quick: 3)")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(rows(args.quick, records=args.records, rounds=args.rounds, calls=args.calls),
                "Audit log cost, interleaved with its baseline in one temporary directory")


if __name__ == "__main__":
    main()
