"""GBNF grammars (the ``ebnf`` field) end to end on the real server and default model: the
output parses under the grammar (checked by the reference recognizer), on /generate and on the
OpenAI chat route; an invalid grammar is a 400 that names the line and column."""

from __future__ import annotations

import pytest

from tests.fsm.test_gbnf_reference import Earley
from tests.server.conftest import assert_no_kv_leak

pytestmark = pytest.mark.timeout(300)

SQL = r"""
root    ::= "SELECT " columns " FROM " ident where? ";"
columns ::= "*" | ident ("," " "? ident)*
where   ::= " WHERE " cond
cond    ::= ident " "? op " "? value ((" AND " | " OR ") cond)?
op      ::= "=" | "<" | ">" | "<=" | ">=" | "!="
value   ::= [0-9]+ | "'" [^'\n]* "'"
ident   ::= [a-z_] [a-z0-9_]*
"""

ANSWER = r"""
root   ::= "Answer: " choice "\n" reason
choice ::= "yes" | "no"
reason ::= "Because " [a-z ,]{1,40} "."
"""


def test_generate_with_ebnf_parses_under_the_grammar(client, server):
    r = client.post("/generate", json={
        "text": "Write a SQL query that lists the users older than 30.\n",
        "sampling_params": {"ebnf": SQL, "max_new_tokens": 64, "temperature": 0}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["meta_info"]["finish_reason"]["type"] == "stop", out
    assert Earley(SQL).accepts(out["text"]), out["text"]
    assert out["text"].startswith("SELECT ")
    # jump-forward drafts (forced text such as " FROM ") are verified, never imposed
    r = client.post("/generate", json={
        "text": "Write a SQL query that lists the users older than 30.\n",
        "sampling_params": {"ebnf": SQL, "max_new_tokens": 64, "temperature": 0, "no_jump_forward": True}})
    assert r.status_code == 200 and r.json()["text"] == out["text"]
    assert_no_kv_leak(server)


def test_chat_completion_with_ebnf_and_sampling(client):
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Is the sky blue? Answer and say why."}],
        "ebnf": ANSWER, "max_tokens": 64, "temperature": 0.8, "seed": 3})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    assert Earley(ANSWER).accepts(choice["message"]["content"]), choice["message"]["content"]


@pytest.mark.parametrize("route, body", [
    ("/generate", {"text": "a", "sampling_params": {"ebnf": 'root ::= item\nitem ::= ("a" | "b"'}}),
    ("/generate", {"text": "a", "stream": True, "sampling_params": {"ebnf": 'root ::= item\nitem ::= ("a" | "b"'}}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "ebnf": 'root ::= item\nitem ::= ("a" | "b"'}),
    ("/v1/completions", {"prompt": "hi", "ebnf": 'root ::= item\nitem ::= ("a" | "b"'}),
])
def test_invalid_grammar_is_400_naming_the_line(client, route, body):
    r = client.post(route, json=body)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "ebnf" in message and "line 2, column 20" in message, message


def test_undefined_rule_and_conflicting_constraints_are_400(client):
    r = client.post("/generate", json={"text": "a", "sampling_params": {"ebnf": 'root ::= "x" | y'}})
    assert r.status_code == 400 and "line 1, column 16: undefined rule 'y'" in r.json()["error"]["message"]
    r = client.post("/generate", json={"text": "a", "sampling_params": {"ebnf": 'root ::= "x"', "regex": "x"}})
    assert r.status_code == 400
