"""Command line: `radixrt serve | generate | convert`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from radixrt.config import ServerArgs


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _server_args(args: argparse.Namespace) -> ServerArgs:
    """ServerArgs from the parsed flags; an invalid combination is a usage error (exit 2), not a traceback."""
    try:
        return ServerArgs.from_cli_args(args)
    except ValueError as e:
        args.parser.error(str(e))
        raise  # unreachable: parser.error exits


def _cmd_generate(args: argparse.Namespace) -> int:
    from radixrt.entrypoints.engine import Engine

    sargs = _server_args(args)
    params = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
              "top_p": args.top_p, "top_k": args.top_k}
    if args.seed_sample is not None:
        params["seed"] = args.seed_sample
    if args.stop:
        params["stop"] = args.stop
    prompt = args.prompt
    with Engine(sargs) as eng:
        if args.chat:
            prompt = eng.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        if args.json:
            print(json.dumps(eng.generate(prompt, params), indent=2))
            return 0
        printed = 0
        for chunk in eng.generate(prompt, params, stream=True):  # text so far in each chunk
            sys.stdout.write(chunk["text"][printed:])
            sys.stdout.flush()
            printed = len(chunk["text"])
        sys.stdout.write("\n")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from radixrt.model.loader import prepare_model_dir

    print(prepare_model_dir(args.model_path))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from radixrt.entrypoints.http_server import launch_server

    server_args = _server_args(args)
    if server_args.node_rank > 0:  # a tensor-parallel node other than 0: its ranks, no server
        from radixrt.model.parallel import serve_node

        _setup_logging(server_args.log_level)
        return serve_node(server_args)
    launch_server(server_args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radixrt",
        description="radixrt: LLM serving with a radix-tree KV cache. With no --model-path, the "
        "embedded SmolLM2-135M-Instruct is used.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="Generate a completion for one prompt and print it.",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument("prompt", help="The prompt text.")
    gen.add_argument("--chat", action="store_true",
                     help="Wrap the prompt as a user message in the model's chat template.")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="Maximum tokens to generate.")
    gen.add_argument("--temperature", type=float, default=0.0, help="Sampling temperature (0 = greedy).")
    gen.add_argument("--top-p", type=float, default=1.0, help="Nucleus sampling probability mass.")
    gen.add_argument("--top-k", type=int, default=-1, help="Sample from the k most likely tokens (-1: all).")
    gen.add_argument("--seed-sample", type=int, default=None, help="Per-request sampling seed.")
    gen.add_argument("--stop", action="append", default=None, help="Stop string (repeatable).")
    gen.add_argument("--json", action="store_true", help="Print the full result (text, ids, meta_info) as JSON.")
    ServerArgs.add_cli_args(gen)
    gen.set_defaults(func=_cmd_generate, parser=gen)

    serve = sub.add_parser("serve", help="Run the HTTP server (native SGLang + OpenAI-compatible API).")
    ServerArgs.add_cli_args(serve)
    serve.set_defaults(func=_cmd_serve, parser=serve)

    conv = sub.add_parser("convert", help="Convert a .gguf (or the default model) into radixrt's "
                          "cache of safetensors + config + tokenizer and print the directory.")
    conv.add_argument("--model-path", default=None, help="A .gguf file or model directory (default: embedded model).")
    conv.set_defaults(func=_cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "log_level", "info"))
    sys.exit(args.func(args))
