"""Structured extraction: a JSON object constrained by a schema, plus typed fields.

    python examples/json_extraction.py [--url http://127.0.0.1:30000]
"""

from __future__ import annotations

import json

from _backend import setup_backend

import radixrt as sgl

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "city": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "city", "age"],
}

TEXTS = [
    "Maria is a 34 year old engineer who lives in Lisbon.",
    "Born 51 years ago, Kenji now runs a small bakery in Osaka.",
]


@sgl.function
def extract(s, text):
    s += sgl.user("Extract the person's name, city and age as JSON.\n\nText: " + text)
    s += sgl.assistant(sgl.gen("person", max_tokens=48, json_schema=json.dumps(SCHEMA)))
    s += sgl.user("How old is the person? Answer with a number.")
    s += sgl.assistant(sgl.gen_int("age", max_tokens=4))
    s += sgl.user("Is the person older than 40? Answer True or False.")
    s += sgl.assistant(sgl.gen("over_40", dtype=bool, max_tokens=3))


def main() -> None:
    args = setup_backend(__doc__)
    for text, st in zip(TEXTS, extract.run_batch([{"text": t} for t in TEXTS], temperature=0), strict=True):
        print(text)
        try:
            print("  person :", json.loads(st["person"]))
        except json.JSONDecodeError:
            print("  person (not valid JSON: is constrained decoding enabled?):", st["person"])
        print("  age    :", st["age"].strip())
        print("  over 40:", st["over_40"].strip())
    args.backend.shutdown()


if __name__ == "__main__":
    main()
