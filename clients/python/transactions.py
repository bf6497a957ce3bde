"""Transactions through redis-py against a meridian proxy: pipeline(transaction=True),
the WATCH retry loop of Redis.transaction, errors while running and while queuing.

Usage: python3 transactions.py PORT
"""

import sys

import redis


def main(port: int) -> None:
    r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    r.delete("{py}:a", "{py}:b", "{py}:s")

    # A transaction: every reply, in order.
    p = r.pipeline(transaction=True)
    p.set("{py}:a", 1).incr("{py}:a").get("{py}:a").hset("{py}:h", "f", "v")
    assert p.execute() == [True, 2, "2", 1], "pipeline(transaction=True)"

    # Check-and-set: another client writes the watched key during the first
    # attempt, so it aborts and the loop runs again on the new value.
    attempts = []

    def add_one(pipe: redis.client.Pipeline) -> None:
        attempts.append(1)
        value = int(pipe.get("{py}:b") or 0)
        if len(attempts) == 1:
            r.set("{py}:b", 100)
        pipe.multi()
        pipe.set("{py}:b", value + 1)

    r.transaction(add_one, "{py}:b")
    assert len(attempts) == 2, f"the watched write did not abort: {attempts}"
    assert r.get("{py}:b") == "101", r.get("{py}:b")

    # An error while running is that command's reply; the others run.
    p = r.pipeline(transaction=True)
    p.set("{py}:s", "text").incr("{py}:s").append("{py}:s", "!")
    replies = p.execute(raise_on_error=False)
    assert replies[0] is True and replies[2] == 5, replies
    assert isinstance(replies[1], redis.ResponseError), replies
    assert r.get("{py}:s") == "text!"

    # Two users' keys: refused while queuing, so nothing runs.
    p = r.pipeline(transaction=True)
    p.set("{py}:x", 1).set("{other}:x", 1)
    try:
        p.execute()
    except (redis.exceptions.ClusterCrossSlotError, redis.exceptions.ExecAbortError):
        pass
    else:
        raise AssertionError("a transaction over two users ran")
    assert r.exists("{py}:x") == 0, "half of a refused transaction ran"
    print("redis-py transactions: ok")


if __name__ == "__main__":
    main(int(sys.argv[1]))
