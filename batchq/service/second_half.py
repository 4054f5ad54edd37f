"""The second process of a two-process check (batchq.service.check_parts): reads what to
check from stdin, checks it, writes its findings to stdout. Both ends are pickles exchanged
between two batchq processes of the same install, never anything a user gives."""

from __future__ import annotations

import pickle
import sys

from batchq.service.check_parts import check_half


def main() -> None:
    half = pickle.load(sys.stdin.buffer)
    sys.stdout.buffer.write(pickle.dumps(check_half(half), protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    main()
