"""The interpreter on a scripted in-memory backend: text, roles, variables, forks,
streaming, select and errors, without a model."""

from __future__ import annotations

import asyncio
import threading

import pytest

import radixrt as sgl
from radixrt.lang import BackendError
from tests.lang.fake_backend import FakeBackend

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake():
    backend = FakeBackend()
    yield backend


def test_text_roles_and_messages(fake):
    fake.reply = lambda prompt: " Paris.\nmore text"

    @sgl.function
    def qa(s, question):
        s += sgl.system("Be brief.")
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=8, stop="\n"))

    st = qa.run(question="Capital of France?", backend=fake)
    assert st["answer"] == " Paris."
    assert st.text() == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                         "<|im_start|>user\nCapital of France?<|im_end|>\n"
                         "<|im_start|>assistant\n Paris.<|im_end|>\n")
    assert st.messages() == [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Capital of France?"},
                             {"role": "assistant", "content": "Paris."}]
    # run() defaults reach the request; the gen overrides them; the chat stop string is added.
    sp = fake.requests[-1]["sampling_params"]
    assert sp["max_new_tokens"] == 8 and sp["stop"] == ["\n", "<|im_end|>"]


def test_role_blocks_and_begin_end_forms(fake):
    @sgl.function
    def chat(s):
        with s.user():
            s += "Hi"
        s += sgl.assistant_begin()
        s += sgl.gen("a", max_tokens=4)
        s += sgl.assistant_end()
        s += sgl.user_begin() + "Bye" + sgl.user_end()

    st = chat.run(backend=fake)
    assert [m["role"] for m in st.messages()] == ["user", "assistant", "user"]
    assert st.messages()[2]["content"] == "Bye"


def test_default_system_prompt_is_inserted(fake):
    fake.chat_template = sgl.lang.ChatTemplate(
        "t", "Default sys.", {r: (f"<{r}>", f"</{r}>") for r in ("system", "user", "assistant")})

    @sgl.function
    def p(s):
        s += sgl.user("Q")

    assert p.run(backend=fake).text() == "<system>Default sys.</system><user>Q</user>"


def test_nested_roles_fail(fake):
    @sgl.function
    def bad(s):
        s += sgl.user_begin()
        s += sgl.assistant_begin()

    with pytest.raises(ValueError, match="do not nest"):
        bad.run(backend=fake)


def test_var_scope_setitem_contains(fake):
    @sgl.function
    def p(s):
        with s.var_scope("block"):
            s += "alpha" + sgl.gen("g", max_tokens=2)
        s["mine"] = 7

    st = p.run(backend=fake)
    assert st["block"] == "alpha fake answer"
    assert st["mine"] == 7 and "g" in st and "nope" not in st
    with pytest.raises(KeyError):
        st["nope"]


def test_tool_use_reads_variable_back_into_prompt(fake):
    fake.reply = lambda prompt: " 6*7" if prompt.endswith("Expression:") else " The answer is 42."

    @sgl.function
    def agent(s):
        s += "Expression:" + sgl.gen("expr", max_tokens=8)
        result = eval(s["expr"].strip(), {"__builtins__": {}})  # the "tool"
        s += f"\nResult: {result}\nAnswer:" + sgl.gen("final", max_tokens=8)

    st = agent.run(backend=fake)
    assert "Result: 42\n" in st.text()
    assert "Result: 42" in fake.requests[-1]["text"]


def test_fork_join_gathers_variables_and_caches_prefix(fake):
    replies = iter([" one", " two", " three"])
    lock = threading.Lock()

    def reply(prompt):
        with lock:
            return next(replies)

    fake.reply = reply

    @sgl.function
    def tot(s):
        s += "Think:"
        forks = s.fork(3)
        forks += sgl.gen("idea", max_tokens=4)
        forks.join()

    st = tot.run(backend=fake)
    assert sorted(st["idea"]) == [" one", " three", " two"]
    assert st.text() == "Think:"  # the parent is unchanged by gather_variable
    # The shared prefix went to the backend once (max_new_tokens=0) before the branches.
    assert fake.requests[0] == {"text": "Think:", "sampling_params": {"max_new_tokens": 0}}


def test_fork_concat_and_append_and_per_fork_exprs(fake):
    fake.reply = lambda prompt: " x"

    @sgl.function
    def p(s):
        s += "Start."
        forks = s.fork(2)
        forks += lambda i: f" branch{i}:"
        forks += [sgl.gen("v", max_tokens=2), " fixed"]
        forks.join("concate_and_append")

    st = p.run(backend=fake)
    assert st.text() == "Start. branch0: x branch1: fixed"


def test_copy_context_manager(fake):
    @sgl.function
    def p(s):
        s += "Base"
        with s.copy() as c:
            c += " side" + sgl.gen("side", max_tokens=2)
        s += " main"

    st = p.run(backend=fake)
    assert st.text() == "Base main"
    assert st["side"] == [" fake answer"]


def test_dtype_becomes_regex(fake):
    fake.reply = lambda prompt: "42"

    @sgl.function
    def p(s):
        s += "n=" + sgl.gen_int("n", max_tokens=4) + " s=" + sgl.gen_string("t") + \
            sgl.gen("b", dtype=bool) + sgl.gen("f", dtype=float) + sgl.gen("r", regex="[ab]+")

    p.run(backend=fake)
    regexes = [r["sampling_params"].get("regex") for r in fake.requests]
    assert regexes == [sgl.REGEX_INT, sgl.REGEX_STR, sgl.REGEX_BOOL, sgl.REGEX_FLOAT, "[ab]+"]
    assert fake.requests[0]["sampling_params"]["stop"][:2] == [" ", "\n"]
    assert sgl.REGEX_INT == r"[-+]?[0-9]+" and sgl.REGEX_FLOAT == r"[-+]?[0-9]*\.?[0-9]+"
    assert sgl.REGEX_BOOL == "(True|False)" and sgl.REGEX_STR == r"\"[\w\d\s]*\""


def test_gen_arguments_reach_the_request(fake):
    @sgl.function
    def p(s):
        s += "x" + sgl.gen("a", max_tokens=5, min_tokens=1, stop=["Z"], stop_token_ids=[7],
                           temperature=0.3, top_p=0.9, top_k=5, min_p=0.1, frequency_penalty=0.2,
                           presence_penalty=0.1, ignore_eos=True, return_logprob=True,
                           logprob_start_len=0, top_logprobs_num=2, return_text_in_logprobs=True,
                           json_schema={"type": "object"})

    p.run(backend=fake)
    req = fake.requests[-1]
    assert req["sampling_params"] == {
        "max_new_tokens": 5, "min_new_tokens": 1, "temperature": 0.3, "top_p": 0.9, "top_k": 5,
        "min_p": 0.1, "frequency_penalty": 0.2, "presence_penalty": 0.1, "ignore_eos": True,
        "json_schema": '{"type": "object"}', "stop": ["Z", "<|im_end|>"], "stop_token_ids": [7]}
    assert req["return_logprob"] and req["logprob_start_len"] == 0 and req["top_logprobs_num"] == 2
    assert req["return_text_in_logprobs"]
    with pytest.raises(ValueError, match="invalid regex"):
        sgl.gen("x", regex="(")


def test_select_token_healing_and_batched_scoring():
    prefs = {" Paris": -0.2, " London": -2.0, " Berlin": -3.0}
    fake = FakeBackend(score=lambda ctx, tok: prefs.get(tok, -5.0))

    @sgl.function
    def p(s):
        s += "The capital of France is " + sgl.select("city", ["Paris", "London", "Berlin"])

    st = p.run(backend=fake)
    assert st["city"] == "Paris"
    assert st.text() == "The capital of France is Paris"
    meta = st.get_meta_info("city")
    # "is " + "Paris" is tokenized " is"," Paris": the prefix's trailing " " token merged into
    # the choice, so each choice is scored by exactly its one healed token.
    assert [[e[2] for e in es] for es in meta["input_token_logprobs"]] == [[" Paris"], [" London"], [" Berlin"]]
    assert meta["normalized_prompt_logprobs"] == [-0.2, -2.0, -3.0]
    # One request caches the prefix, one scores prefix + every choice in a batch.
    assert len(fake.requests) == 2
    assert fake.requests[0]["sampling_params"] == {"max_new_tokens": 0}
    assert fake.requests[1]["text"][1:] == [f"The capital of France is {c}" for c in ("Paris", "London", "Berlin")]


def test_select_methods():
    # "ab" scores better per token on average; "a" wins on its first token.
    table = {" a": -0.5, " b": -0.1, " c": -0.4}
    fake = FakeBackend(score=lambda ctx, tok: table.get(tok, -9.0))

    def pick(method):
        @sgl.function
        def p(s):
            s += "Pick:" + sgl.select("x", [" c", " a b"], choices_method=method)

        return p.run(backend=fake)["x"]

    assert pick(sgl.token_length_normalized) == " a b"  # mean(-0.5, -0.1) = -0.3 > -0.4
    assert pick(sgl.greedy_token_selection) == " c"  # -0.4 > -0.5 at the first token
    assert pick("unconditional_likelihood_normalized") in (" c", " a b")
    assert sgl.gen("x", choices=["p", "q"]).choices == ["p", "q"]  # gen(choices=...) is select
    with pytest.raises(ValueError):
        sgl.select("x", choices=[])


def test_streaming_whole_text_and_variable():
    for logprob_lists in ("new", "whole", "legacy"):
        fake = FakeBackend(reply=lambda p: " one two three", logprob_lists=logprob_lists)

        @sgl.function
        def p(s):
            s += "Count:" + sgl.gen("c", max_tokens=8, return_logprob=True)

        st = p.run(stream=True, backend=fake)
        assert "".join(st.text_iter()) == "Count: one two three"
        st = p.run(stream=True, backend=fake)
        items = list(st.text_iter("c", return_meta_data=True))
        assert "".join(t for t, _ in items) == " one two three"
        assert sum(len(m["output_token_logprobs"]) for _, m in items) == 3
        assert len(st.get_meta_info("c")["output_token_logprobs"]) == 3
        assert st["c"] == " one two three"


def test_text_async_iter():
    fake = FakeBackend(reply=lambda p: " a b")

    @sgl.function
    def p(s):
        s += "X" + sgl.gen("v", max_tokens=4)

    async def collect():
        st = p.run(stream=True, backend=fake)
        return [t async for t in st.text_async_iter("v")]

    assert "".join(asyncio.run(collect())) == " a b"


def test_errors_surface_as_exceptions():
    fake = FakeBackend(fail_with="sampling_params.top_p: must be in (0, 1]")

    @sgl.function
    def p(s):
        s += "x" + sgl.gen("v", max_tokens=2)

    with pytest.raises(BackendError, match="top_p"):
        p.run(backend=fake)
    st = p.run(stream=True, backend=fake)
    with pytest.raises(BackendError, match="top_p"):
        list(st.text_iter("v"))
    states = p.run_batch([{}, {}], backend=fake)
    assert all(isinstance(s.error(), BackendError) for s in states)
    with pytest.raises(BackendError):
        states[0]["v"]


def test_program_exceptions_propagate(fake):
    @sgl.function
    def p(s):
        s += "x"
        raise ZeroDivisionError("user bug")

    with pytest.raises(ZeroDivisionError):
        p.run(backend=fake)


def test_run_batch_precaches_traced_prefix_and_accepts_tuples(fake):
    fake.reply = lambda prompt: " ok"
    shots = "Q: 1+1?\nA: 2\n" * 8

    @sgl.function
    def few_shot(s, question, suffix="?"):
        s += shots
        s += "Q: " + question + suffix + "\nA:" + sgl.gen("a", max_tokens=3)

    states = few_shot.run_batch([("3+3",), {"question": "4+4"}, ("5+5", "!")], num_threads=2)
    assert [st["a"] for st in states] == [" ok"] * 3
    assert states[2].text().endswith("Q: 5+5!\nA: ok")
    cached = [r for r in fake.requests if r["sampling_params"] == {"max_new_tokens": 0}]
    assert cached and cached[0]["text"] == shots  # the text before the first argument
    gen_states = list(few_shot.run_batch([{"question": "1"}, {"question": "2"}], generator_style=True))
    assert [st["a"] for st in gen_states] == [" ok", " ok"]


@pytest.fixture(autouse=True)
def _default_backend(fake):
    sgl.set_default_backend(fake)
    yield
    sgl.set_default_backend(None)


def test_default_backend_bind_flush_and_info(fake):
    @sgl.function
    def p(s, a, b):
        s += a + b

    assert p.bind(a="x").run(b="y").text() == "xy"
    assert p("1", "2").text() == "12"
    assert sgl.flush_cache() is True
    assert sgl.get_server_info() == {"fake": True}
    with pytest.raises(TypeError, match="named 's'"):
        sgl.function(lambda x: None)
    with pytest.raises(NotImplementedError):
        sgl.image("cat.png")


def _res(prompt_tokens, entries):
    return {"meta_info": {"prompt_tokens": prompt_tokens, "input_token_logprobs": entries}}


def test_choice_token_alignment_edge_cases():
    from radixrt.lang.backends.native import choice_token_logprobs

    # No healing: the choice starts right after the prefix.
    prefix = _res(5, [[-1, 13, None], [-1, 14, None]])
    choice = _res(6, [[-1, 13, None], [-1, 14, None], [-0.5, 20, None]])
    assert choice_token_logprobs(prefix, choice) == [[-0.5, 20, None]]
    # Healing: the prefix's last token (14) is replaced by a merged one (21).
    choice = _res(5, [[-1, 13, None], [-0.7, 21, None]])
    assert choice_token_logprobs(prefix, choice) == [[-0.7, 21, None]]
    # Divergence at the first compared position: cannot tell where it starts.
    choice = _res(5, [[-1, 99, None], [-0.7, 21, None]])
    assert choice_token_logprobs(prefix, choice) is None
    # A one-token prefix whose position-0 entry the server left out.
    assert choice_token_logprobs(_res(1, []), _res(2, [[None, 5, None], [-0.3, 6, None]])) == [[-0.3, 6, None]]
