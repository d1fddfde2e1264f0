"""Shared by the examples: pick where programs run.

By default an in-process radixrt Engine on the default model (no server needed); with
``--url http://host:port`` a running radixrt (or SGLang) server; with ``--runtime`` a local
server that the example starts and stops.
"""

from __future__ import annotations

import argparse

import radixrt as sgl


def setup_backend(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", help="use a running server at this URL")
    parser.add_argument("--runtime", action="store_true", help="start a local server for this run")
    parser.add_argument("--model-path", default=None, help="model for the in-process engine/runtime")
    args = parser.parse_args()
    if args.url:
        backend = sgl.RuntimeEndpoint(args.url)
    elif args.runtime:
        backend = sgl.Runtime(model_path=args.model_path)
    else:
        backend = sgl.EngineBackend(model_path=args.model_path)
    sgl.set_default_backend(backend)
    args.backend = backend
    return args
