"""Serving benchmark: the HTTP server vs the offline Engine, same prompts, same machine, one run.

For each concurrency C (default 1, 8, 32), C closed-loop clients each send streaming requests
back to back until the workload's requests are done:
  server -- `POST /generate` with "stream": true to a `radixrt serve` subprocess (a lean
            asyncio HTTP/1.1 client, `SSEClient`: the clients share the server's CPU)
  engine -- C threads calling the in-process `Engine.generate(..., stream=True)`
Prompts are random token ids (nothing to share in the prefix cache), greedy, ignore_eos, so
both produce exactly the same number of tokens. Server and engine alternate for --repeats
rounds; the table shows medians: output tokens/s, time to first token, inter-token latency
(the gap between streamed chunks divided by the tokens they carry) and the throughput ratio
server / engine (target >= 0.9).

  python bench/serving/bench_serving.py [--concurrency 1,8,32] [--repeats 3] [--output-len 32]
      [--prompt-len 128] [--num-threads N] [--no-write]

Results go to bench/results/serving.json and replace the "## Serving" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # this checkout's radixrt, and bench/common.py
from common import markdown_table, median, print_table, save_results  # noqa: E402

COLUMNS = ["concurrency", "requests", "system", "out_tok_s", "ttft_ms", "itl_ms", "e2e_s", "ratio"]
SECTION = "## Serving"


# ----------------------------------------------------------------- workload
def make_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab - 100) for _ in range(length)] for _ in range(n)]


class Stats:
    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.itl: list[float] = []
        self.e2e: list[float] = []
        self.tokens = 0

    def record(self, t0: float, events: list[tuple[float, int]]) -> None:
        """``events``: (time, cumulative output tokens) per streamed chunk."""
        events = [e for e in events if e[1] > 0]
        if not events:
            return
        self.ttft.append(events[0][0] - t0)
        for (ta, na), (tb, nb) in zip(events, events[1:], strict=False):
            if nb > na:
                self.itl.extend([(tb - ta) / (nb - na)] * (nb - na))
        self.e2e.append(events[-1][0] - t0)
        self.tokens += events[-1][1]


def summarize(stats: Stats, wall: float) -> dict[str, float]:
    return {"out_tok_s": stats.tokens / wall, "ttft_ms": 1000 * median(stats.ttft),
            "itl_ms": 1000 * median(stats.itl), "e2e_s": median(stats.e2e)}


# ----------------------------------------------------------------- server side
class SSEClient:
    """A minimal HTTP/1.1 keep-alive client for streamed ``POST /generate`` (asyncio streams,
    chunked transfer decoding). The clients run on the same CPU as the server, so their own
    cost is kept low: httpx spent ~0.2 ms of CPU per streamed chunk here, about 2% of a
    batch-1 decode step, taken from the server under test."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def stream(self, path: str, payload: dict) -> list[tuple[float, int]]:
        """(arrival time, len(output_ids)) of every SSE data event of one request."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(payload).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                          .encode() + body)
        reader = self.reader
        status = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip().lower()
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{path}: {status.decode().strip()}")
        if headers.get("transfer-encoding") != "chunked":
            raise RuntimeError(f"{path}: expected a chunked stream, got {headers}")
        events: list[tuple[float, int]] = []
        buf = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            buf += data[:-2]
            *complete, buf = buf.split(b"\n\n")
            now = time.perf_counter()
            for event in complete:
                if event.startswith(b"data: {"):
                    events.append((now, len(json.loads(event[6:])["output_ids"])))
        if headers.get("connection") == "close":
            await self.close()
        return events


async def _server_round(url: str, prompts: list[list[int]], params: dict, concurrency: int) -> dict:
    stats = Stats()
    queue = list(prompts)
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)

    async def client() -> None:
        conn = SSEClient(host, int(port))
        try:
            while queue:
                ids = queue.pop()
                t0 = time.perf_counter()
                events = await conn.stream("/generate", {"input_ids": ids, "sampling_params": params,
                                                         "stream": True})
                stats.record(t0, events)
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {**summarize(stats, wall), "_wall": wall}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def server_processes(pid: int) -> dict[str, int]:
    """The server's processes through /proc: its HTTP process, the scheduler(s) and the
    detokenizer (radixrt spawns the schedulers first, the detokenizer last)."""
    procs = {"http": pid}
    try:
        kids = sorted(int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        kids = [k for k in kids if b"multiprocessing-fork" in Path(f"/proc/{k}/cmdline").read_bytes()]
    except OSError:
        return procs
    if len(kids) >= 2:  # not e.g. the resource tracker
        for i, k in enumerate(kids[:-1]):
            procs["scheduler" if len(kids) == 2 else f"scheduler{i}"] = k
        procs["detokenizer"] = kids[-1]
    return procs


def run_server(url: str, prompts, params, concurrency: int, procs: dict[str, int] | None = None) -> dict:
    """One round; with ``procs`` (name -> pid) also the CPU milliseconds each of them, and this
    client process, spent per output token (``cpu_<name>``): on a shared machine CPU time is a
    steadier measure of the server's own cost than wall time."""
    procs = procs or {}
    before = {n: process_cpu_s(p) for n, p in procs.items()}
    client0 = time.process_time()
    res = asyncio.run(_server_round(url, prompts, params, concurrency))
    tokens = res["out_tok_s"] * res.pop("_wall")
    if tokens and procs:
        for n, p in procs.items():
            res[f"cpu_{n}"] = 1e3 * (process_cpu_s(p) - before[n]) / tokens
        res["cpu_client"] = 1e3 * (time.process_time() - client0) / tokens
    return res


# ----------------------------------------------------------------- engine side
def run_engine(engine, prompts: list[list[int]], params: dict, concurrency: int) -> dict:
    stats = Stats()
    queue = list(prompts)
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                ids = queue.pop()
            t0 = time.perf_counter()
            events = []
            for chunk in engine.generate(input_ids=ids, sampling_params=params, stream=True):
                events.append((time.perf_counter(), len(chunk["output_ids"])))
            with lock:
                stats.record(t0, events)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(stats, time.perf_counter() - t0)


# ----------------------------------------------------------------- harness
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "radixrt", "serve", "--port", str(port), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


def write_docs(table: str, args: argparse.Namespace, ratios: dict[int, float],
               load: tuple[float, float]) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    cmd = "python bench/serving/bench_serving.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in (
            ("concurrency", args.concurrency), ("repeats", args.repeats), ("prompt_len", args.prompt_len),
            ("output_len", args.output_len)) if v is not None)
    if args.num_threads:
        cmd += f" --num-threads {args.num_threads}"
    worst = min(ratios.values())
    section = (
        f"{SECTION} (HTTP server vs offline Engine)\n\n"
        f"Command: `{cmd}`\n\n"
        f"Run of {date.today().isoformat()}: random {args.prompt_len}-token prompts, "
        f"{args.output_len} output tokens (greedy, ignore_eos), streaming; C closed-loop clients "
        f"(HTTP `POST /generate` to `radixrt serve`, or threads on `Engine.generate(stream=True)` "
        f"in-process); medians of {args.repeats} alternating rounds. ITL = gap between streamed "
        f"chunks / tokens they carry. `ratio` = server / engine output tokens/s "
        f"(target >= 0.9; lowest here {worst:.2f}). Load average of the shared 2-core machine: "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end; single rounds move by tens of "
        f"percent with it, so compare the ratios.\n\n{table}\n")
    start = text.find(SECTION)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[nxt + 1:] if nxt != -1 else "")
    path.write_text(text)
    print(f"updated {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    ap.add_argument("--requests-per-client", type=int, default=2, help="requests per client and round")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds per system (medians)")
    ap.add_argument("--num-threads", type=int, default=None, help="torch threads for both systems")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args()

    from radixrt import Engine

    extra = ["--max-running-requests", "64"]
    if args.model_path:
        extra += ["--model-path", args.model_path]
    if args.num_threads:
        extra += ["--num-threads", str(args.num_threads)]
    load_start = os.getloadavg()[0]
    proc, url = start_server(extra)
    procs = server_processes(proc.pid)
    engine = None
    try:
        engine = Engine(model_path=args.model_path, max_running_requests=64, num_threads=args.num_threads)
        vocab = engine.runner.config.vocab_size
        params = {"max_new_tokens": args.output_len, "temperature": 0, "ignore_eos": True}
        warm = make_prompts(2, 16, vocab, seed=0)
        run_server(url, warm, {**params, "max_new_tokens": 2}, 2)
        run_engine(engine, warm, {**params, "max_new_tokens": 2}, 2)
        rows, ratios, raw = [], {}, {}
        for c in [int(x) for x in args.concurrency.split(",") if x]:
            n = c * args.requests_per_client
            prompts = make_prompts(n, args.prompt_len, vocab, seed=c)
            runs: dict[str, list[dict]] = {"server": [], "engine": []}
            for r in range(args.repeats):
                for system in (("server", "engine") if r % 2 == 0 else ("engine", "server")):
                    httpx.post(url + "/flush_cache", timeout=60)
                    engine.flush_cache()
                    res = (run_server(url, prompts, params, c, procs) if system == "server"
                           else run_engine(engine, prompts, params, c))
                    runs[system].append(res)
                    print(f"C={c} round {r} {system}: {res}", flush=True)
            med = {s: {k: statistics.median(x[k] for x in v) for k in v[0]} for s, v in runs.items()}
            ratios[c] = med["server"]["out_tok_s"] / med["engine"]["out_tok_s"]
            for s in ("server", "engine"):
                rows.append({"concurrency": c, "requests": n, "system": s, **med[s],
                             "ratio": ratios[c] if s == "server" else None})
            raw[c] = runs
        print_table(rows, COLUMNS)
        cpu_cols = [k for k in rows[0] if k.startswith("cpu_")] if rows else []
        if cpu_cols:
            print("\nserver rounds, CPU ms per output token by process (medians):")
            print_table([r for r in rows if r["system"] == "server"], ["concurrency", *cpu_cols])
        save_results("serving", {"args": vars(args), "rows": rows, "runs": raw})
        if not args.no_write:
            write_docs(markdown_table(rows, COLUMNS), args, ratios, (load_start, os.getloadavg()[0]))
    finally:
        if engine is not None:
            engine.shutdown()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


if __name__ == "__main__":
    main()
