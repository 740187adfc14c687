"""A separate claiming process for the claim tests (its own connection, its own pid).

Waits until ``--start-at`` (a ``time.time()``), so that several claimers race, claims
every key it can, prints ``CLAIMED <json list>``, and holds the claims until its stdin
closes (or it is killed, which is the point of some tests).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from bench.claims import FileClaims, PostgresClaims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("store", help="postgresql://... or a lock folder")
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("keys", nargs="+")
    args = parser.parse_args()

    claims = PostgresClaims(args.store) if args.store.startswith("postgresql://") else FileClaims(args.store)
    time.sleep(max(0.0, args.start_at - time.time()))
    held = [c for c in map(claims.claim, args.keys) if c is not None]
    print("CLAIMED", json.dumps([c.key for c in held]), flush=True)
    sys.stdin.read()  # hold until the parent closes our stdin
    for claim in held:
        claim.release()


if __name__ == "__main__":
    main()
