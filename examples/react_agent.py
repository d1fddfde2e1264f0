"""A ReAct-style agent: the model picks a tool with `select`, writes its input with `gen`,
and the program runs the tool and feeds the observation back into the prompt.

    python examples/react_agent.py [--url http://127.0.0.1:30000]
"""

from __future__ import annotations

import ast
import operator

from _backend import setup_backend

import radixrt as sgl

FACTS = {"france": "Paris is the capital of France.", "everest": "Mount Everest is 8849 m high.",
         "python": "Python was first released in 1991."}
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def calculator(expression: str) -> str:
    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("unsupported expression")

    try:
        return str(ev(ast.parse(expression.strip(), mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError) as e:
        return f"error: {e}"


def lookup(topic: str) -> str:
    key = next((k for k in FACTS if k in topic.lower()), None)
    return FACTS[key] if key else "No entry found."


TOOLS = {"calculator": calculator, "lookup": lookup}

PROMPT = """Answer the question using the tools calculator (arithmetic) and lookup (facts).
Use the format:
Thought: ...
Action: calculator or lookup or finish
Input: ...
Observation: ...

Question: What is 12 * 12?
Thought: I should compute this.
Action: calculator
Input: 12 * 12
Observation: 144
Thought: I know the answer now.
Action: finish
Input: 144
"""


@sgl.function
def react(s, question, max_steps=3):
    s += PROMPT + "\nQuestion: " + question + "\n"
    for step in range(max_steps):
        s += "Thought:" + sgl.gen(f"thought_{step}", max_tokens=24, stop="\n") + "\n"
        s += "Action: " + sgl.select(f"action_{step}", ["calculator", "lookup", "finish"]) + "\n"
        s += "Input:" + sgl.gen(f"input_{step}", max_tokens=16, stop="\n") + "\n"
        action = s[f"action_{step}"]
        if action == "finish":
            s["answer"] = s[f"input_{step}"].strip()
            return
        s += "Observation: " + TOOLS[action](s[f"input_{step}"]) + "\n"
    s += "Final answer:" + sgl.gen("answer", max_tokens=24, stop="\n")


def main() -> None:
    args = setup_backend(__doc__)
    for question in ["What is 17 * 23?", "What is the capital of France?"]:
        state = react.run(question=question, temperature=0)
        print(state.text())
        print("=> answer:", state["answer"].strip(), "\n")
    args.backend.shutdown()


if __name__ == "__main__":
    main()
