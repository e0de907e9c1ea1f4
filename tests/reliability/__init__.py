"""Reliability: nothing a client or a file can do takes the server down (issue 16, part 2).

Corrupt files served through the real app (`corrupt_served`), generated requests against a
real server process (`request_fuzz`), many clients at once with slow readers, vanishing
clients and session-cap pressure (`soak`), and injected faults (`test_faults`). Each has a
bounded test in `make test`; `make soak` (`python -m tests.reliability`) runs them at full size.
"""
