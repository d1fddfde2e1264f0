"""Real programs against a real radixrt server (the default model), started once for the
module through `Runtime`. Generations are short: the point is the frontend/server contract."""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import sys
import time

import pytest

import radixrt
import radixrt as sgl
from radixrt.lang import BackendConnectionError, BackendError

pytestmark = pytest.mark.timeout(600)

FEW_SHOT = """Answer each question with a single word.
Q: What color is the sky on a clear day?
A: Blue
Q: What is the largest planet in the solar system?
A: Jupiter
Q: What animal says moo?
A: Cow
"""


@pytest.fixture(scope="module")
def runtime(default_model_dir):
    rt = sgl.Runtime(max_total_tokens=16384, log_level="warning", launch_timeout=400)
    sgl.set_default_backend(rt)
    yield rt
    sgl.set_default_backend(None)
    rt.shutdown()


@sgl.function
def few_shot_qa(s, question):
    s += FEW_SHOT
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=6, stop="\n")


def test_few_shot_qa_run_batch(runtime):
    questions = ["What is the capital of France?", "What is frozen water called?", "What do bees make?"]
    states = few_shot_qa.run_batch([{"question": q} for q in questions], temperature=0, num_threads=3)
    answers = [st["answer"] for st in states]
    assert all(isinstance(a, str) and a.strip() for a in answers), answers
    assert "Paris" in answers[0]
    # run_batch traced the shared few-shot text and cached it first: every program hits it.
    for st in states:
        meta = st.get_meta_info("answer")
        assert meta["cached_tokens"] >= 40, meta


@sgl.function
def chat(s, q1, q2):
    s += sgl.user(q1)
    s += sgl.assistant(sgl.gen("a1", max_tokens=10))
    with s.user():
        s += q2
    s += sgl.assistant(sgl.gen("a2", max_tokens=10))


def test_multi_turn_chat_with_roles(runtime):
    st = chat.run(q1="What is the capital of France?", q2="And of Germany?", temperature=0)
    roles = [m["role"] for m in st.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]  # SmolLM's default system
    assert st.messages()[2]["content"] == st["a1"].strip()
    text = st.text()
    assert text.startswith("<|im_start|>system\n") and text.count("<|im_start|>assistant\n") == 2
    # The second turn reuses the first turn's KV through the radix cache.
    assert st.get_meta_info("a2")["cached_tokens"] >= st.get_meta_info("a1")["prompt_tokens"] - 1


@sgl.function
def capital(s, method):
    s += "The capital of France is " + sgl.select("city", ["Paris", "London", "Berlin"], choices_method=method)
    s += "."


@pytest.mark.parametrize("method", ["token_length_normalized", "greedy_token_selection",
                                    "unconditional_likelihood_normalized"])
def test_select(runtime, method):
    st = capital.run(method=method)
    assert st["city"] == "Paris"
    assert st.text() == "The capital of France is Paris."
    meta = st.get_meta_info("city")
    # Token healing: "is " + "Paris" tokenizes as " Paris"; that one token is what is scored.
    assert [e[2] for e in meta["input_token_logprobs"][0]] == [" Paris"]


@sgl.function
def yes_no(s):
    s += sgl.user("Is the sun hot? Answer yes or no.")
    s += sgl.assistant(sgl.select("answer", ["yes", "no"]))


def test_select_in_chat(runtime):
    st = yes_no.run()
    assert st["answer"] in ("yes", "no")
    assert st.messages()[-1] == {"role": "assistant", "content": st["answer"]}


@sgl.function
def tree_of_thought(s, question):
    s += "Question: " + question + "\n"
    forks = s.fork(3)
    for i, f in enumerate(forks):
        f += f"Idea {i + 1}:" + sgl.gen("idea", max_tokens=6, stop="\n")
    forks.join()
    s += "Best idea:" + sgl.gen("best", max_tokens=6, stop="\n")


def test_fork_join_shares_prefix(runtime):
    st = tree_of_thought.run(question="How can I save energy at home?", temperature=0)
    ideas = st["idea"]
    assert isinstance(ideas, list) and len(ideas) == 3
    metas = st.get_meta_info("idea")
    # The fork committed the shared prefix first; each branch found it in the cache.
    assert all(m["cached_tokens"] >= 8 for m in metas), metas
    assert "Best idea:" in st.text()


@sgl.function
def story(s):
    s += sgl.user("Write one sentence about the sea.")
    s += sgl.assistant(sgl.gen("answer", max_tokens=12, return_logprob=True, top_logprobs_num=2))


def test_streaming_text_and_logprobs(runtime):
    st = story.run(stream=True, temperature=0)
    items = list(st.text_iter("answer", return_meta_data=True))
    text = "".join(t for t, _ in items)
    assert text == st["answer"] and text
    meta = st.get_meta_info("answer")
    per_chunk = [len(m["output_token_logprobs"]) for _, m in items]
    assert sum(per_chunk) == meta["completion_tokens"] == len(meta["output_token_logprobs"])
    assert all(len(top) <= 2 for top in meta["output_top_logprobs"])
    st = story.run(stream=True, temperature=0)
    assert "".join(st.text_iter()) == st.text()


def weather_tool(city: str) -> str:
    return f"It is 21 degrees and sunny in {city.strip() or 'that city'}."


@sgl.function
def tool_use(s):
    s += "You can call a weather tool.\nUser: What's the weather in Paris?\n"
    s += "Tool call: weather(city=\"" + sgl.gen("city", max_tokens=4, stop="\"") + "\")\n"
    s += "Observation: " + weather_tool(s["city"]) + "\n"
    s += "Answer:" + sgl.gen("answer", max_tokens=12, stop="\n")


def test_tool_use_reads_variable_back(runtime):
    st = tool_use.run(temperature=0)
    assert f"Observation: {weather_tool(st['city'])}\n" in st.text()
    assert isinstance(st["answer"], str)


@sgl.function
def structured(s):
    s += "Three digits: " + sgl.gen("digits", max_tokens=6, regex=r"[0-9]{3}")
    s += "\nAn integer: " + sgl.gen_int("n", max_tokens=6)
    s += "\nA person as JSON: " + sgl.gen("person", max_tokens=30, json_schema=json.dumps({
        "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"]}))


def test_regex_json_and_dtype(runtime):
    st = structured.run(temperature=0)
    assert re.fullmatch(r"[0-9]{3}", st["digits"])
    int(st["n"])
    person = json.loads(st["person"])
    # No additionalProperties: an open object, so extra members are valid too.
    assert {"name", "age"} <= set(person) and isinstance(person["age"], int)
    assert isinstance(person["name"], str)


def test_sglang_program_unchanged(runtime, monkeypatch):
    monkeypatch.setitem(sys.modules, "sglang", radixrt)
    program = importlib.import_module("tests.lang.programs.sglang_program")
    state, tool = program.run(runtime)
    assert state["answer_1"] and state["answer_2"]
    assert len(state.messages()) == 5
    assert tool["tool"] in ("calculator", "search engine")


def test_real_sglang_frontend_against_radixrt(runtime):
    sglang = pytest.importorskip("sglang", reason="the sglang package is not installed")
    if sglang is radixrt:
        pytest.skip("sglang is aliased to radixrt")

    @sglang.function
    def qa(s):
        s += "The capital of France is " + sglang.select("city", ["Paris", "London"])
        s += "\nQ: Name a color.\nA:" + sglang.gen("color", max_tokens=4, stop="\n")

    backend = sglang.RuntimeEndpoint(runtime.url)
    st = qa.run(backend=backend, temperature=0)
    assert st["city"] == "Paris" and isinstance(st["color"], str)

    @sglang.function
    def structured(s, n):
        s += f"Q: What is {n} plus {n}?\nA: " + sglang.gen("num", max_tokens=6, regex=r"[0-9]{1,3}")
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"\nIdea {i}:" + sglang.gen("idea", max_tokens=8, stop_regex=r"[.!?]")
        s += "\n" + "".join(f["idea"] for f in forks)

    states = structured.run_batch([{"n": 2}, {"n": 7}], backend=backend, temperature=0)
    for st in states:
        assert re.fullmatch(r"[0-9]{1,3}", st["num"]), st["num"]
        assert not re.search(r"[.!?]", st.text().split("A: ", 1)[1])


def test_openai_backend_against_radixrt_v1(runtime):
    chat_backend = sgl.OpenAI("smollm", base_url=runtime.url + "/v1")
    st = chat.run(q1="What is the capital of France?", q2="And of Germany?", temperature=0, backend=chat_backend)
    assert st["a1"] and st["a2"] and len(st.messages()) == 4
    st = story.run(stream=True, temperature=0, backend=chat_backend)
    assert "".join(st.text_iter("answer")) == st["answer"] and st["answer"]
    completion_backend = sgl.OpenAI("smollm", base_url=runtime.url + "/v1", is_chat_model=False)
    st = capital.run(method="token_length_normalized", backend=completion_backend)
    assert st["city"] == "Paris"  # scored with echo + logprobs on /v1/completions


def test_server_errors_surface_with_its_message(runtime):
    @sgl.function
    def bad(s):
        s += "x" + sgl.gen("y", max_tokens=4, top_p=5.0)

    with pytest.raises(BackendError, match="top_p"):
        bad.run()


def test_server_info_flush_and_no_kv_leak(runtime):
    assert sgl.flush_cache() is True
    deadline = time.monotonic() + 30
    while True:
        info = sgl.get_server_info()
        mem = info["memory"]
        if info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0:
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    assert mem["kv_running_slots"] == 0, mem
    assert mem["kv_free_slots"] + mem["kv_cached_slots"] == mem["kv_total_slots"], mem


@sgl.function
def long_story(s):
    s += "Once upon a time" + sgl.gen("story", max_tokens=400, ignore_eos=True)


def test_server_death_raises_instead_of_hanging(runtime):
    """Keep last in the module: it kills the module's server."""
    st = long_story.run(stream=True, temperature=0)
    it = st.text_iter("story")
    next(it)  # generation is under way
    os.kill(runtime.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(BackendConnectionError):
        for _ in it:
            pass
    assert time.monotonic() - start < 60
    with pytest.raises(BackendConnectionError, match="exited"):
        few_shot_qa.run(question="Still there?")
