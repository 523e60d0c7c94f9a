"""``python -m cheq_jupyter.testing serve``: run the offline demo model until stopped.

It prints shell lines to point the SDK (and cheq-jupyter) at it::

    $ python -m cheq_jupyter.testing serve > /tmp/fake-mistral.env &
    $ . /tmp/fake-mistral.env        # sets MISTRAL_SERVER_URL and MISTRAL_API_KEY

The key it generates only opens this local fake, so printing it is harmless. A key passed
with ``--api-key`` is never printed (it might be a real one pasted by mistake). Only loopback
hosts are accepted unless ``--allow-remote`` is given.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from ._fake_mistral import FakeMistral
from .scenarios import DEMO_CHUNK_PAUSE, demo_responder


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cheq_jupyter.testing",
        description="Loopback fakes for cheq-jupyter's tests and offline demos.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the offline demo model (FakeMistral + demo_responder) until stopped",
        description="Serve the offline demo model until Ctrl+C or SIGTERM; prints "
        "'export MISTRAL_SERVER_URL=...' lines for a shell.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port (default 0: a free port)")
    serve.add_argument("--api-key", default=None, help="key to accept (default: a generated one)")
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (the fake has no real security; avoid it)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not _is_loopback(args.host) and not args.allow_remote:
        parser.error(
            f"--host {args.host} is not a loopback address; use 127.0.0.1 (or pass "
            "--allow-remote if you really mean to expose the fake)."
        )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    with FakeMistral(demo_responder, api_key=args.api_key, host=args.host, port=args.port,
                     chunk_pause=DEMO_CHUNK_PAUSE) as fake:
        print(f"export MISTRAL_SERVER_URL={shlex.quote(fake.url)}")
        if args.api_key is None:
            print(f"export MISTRAL_API_KEY={shlex.quote(fake.api_key)}")
        else:
            print("# MISTRAL_API_KEY: use the key you passed with --api-key")
        sys.stdout.flush()
        print(f"# FakeMistral demo model serving at {fake.url}; stop with Ctrl+C.", file=sys.stderr)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
