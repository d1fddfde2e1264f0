"""The in-process scheduling core: no ZeroMQ, no HTTP.

The loop (`scheduler.py`), KV bookkeeping of running requests, the prefill adder, the
queue policies, post-processing after a forward, `Req`, and the grammar manager. The
offline Engine drives it on a thread; the server's scheduler process wraps it in a ZeroMQ loop.
"""
