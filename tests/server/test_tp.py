"""`radixrt serve --tp-size 2` as two "nodes" on localhost (`--nnodes 2 --node-rank 0/1
--dist-init-addr`): node 0 serves HTTP and runs rank 0, node 1 runs rank 1 only. Greedy tokens
match the unsharded model's, and stopping node 0 ends node 1 and every rank process."""

from __future__ import annotations

import subprocess
import sys

import httpx
import psutil

from tests.engine.conftest import tiny_model_dir  # noqa: F401  (the 2-layer random Llama)
from tests.server.conftest import REPO_ROOT, ServerProcess, free_port, pid_alive

PROMPTS = [[1, 504, 3458, 314, 260, 1345, 30], [1, 23, 4567, 89, 1011, 1213, 1415, 1617, 7]]
GREEDY = {"max_new_tokens": 8, "temperature": 0}


def _greedy_tp1(model_dir, prompt: list[int], n: int) -> list[int]:
    """The unsharded model's greedy tokens (argmax of each step's logits), on a ModelRunner."""
    import torch

    from radixrt.config import ServerArgs
    from radixrt.model.forward_batch import ForwardBatch
    from radixrt.model.runner import ModelRunner

    runner = ModelRunner(ServerArgs(model_path=str(model_dir), quantization="none", num_threads=1,
                                    max_total_tokens=256, log_level="warning"))
    rt = torch.arange(256, dtype=torch.int64).view(1, 256)
    seq, out = list(prompt), []
    fb = ForwardBatch.build(seq, [len(seq)], [len(seq)], rt[0, :len(seq)], rt, [0])
    for _ in range(n):
        out.append(int(runner.forward(fb)[0].argmax()))
        seq.append(out[-1])
        fb = ForwardBatch.build(out[-1:], [len(seq)], [1], rt[0, len(seq) - 1:len(seq)], rt, [0])
    return out


def test_two_node_tp2_matches_tp1_and_shuts_down(tiny_model_dir):  # noqa: F811
    ref = [_greedy_tp1(tiny_model_dir, p, GREEDY["max_new_tokens"]) for p in PROMPTS]

    addr = f"127.0.0.1:{free_port()}"
    tp = ["--model-path", str(tiny_model_dir), "--tp-size", "2", "--nnodes", "2",
          "--dist-init-addr", addr]
    node1 = subprocess.Popen([sys.executable, "-m", "radixrt", "serve", *tp, "--node-rank", "1",
                              "--num-threads", "1", "--log-level", "warning"], cwd=REPO_ROOT)
    node0 = None
    try:
        node0 = ServerProcess(*tp, "--node-rank", "0", "--max-total-tokens", "1024")
        node1_ranks = psutil.Process(node1.pid).children(recursive=True)
        assert len(node1_ranks) == 1  # rank 1
        for p, want in zip(PROMPTS, ref):
            r = httpx.post(node0.url + "/generate", json={"input_ids": p, "sampling_params": GREEDY},
                           timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["output_ids"] == want
        descendants = [d.pid for d in node0.descendants]
        assert node0.stop() is not None  # nothing of node 0 had to be killed
        node0 = None
        assert node1.wait(timeout=30) == 0  # rank 0 told rank 1 to stop: a clean exit
        assert not any(pid_alive(pid) for pid in descendants + [d.pid for d in node1_ranks])
    finally:
        if node0 is not None:
            node0.stop()
        if node1.poll() is None:
            node1.kill()
            node1.wait()
