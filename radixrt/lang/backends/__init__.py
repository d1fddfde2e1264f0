"""Backends: where a program's generations run (imported lazily by `radixrt.lang.api`).

- `runtime_endpoint.RuntimeEndpoint`: a radixrt/SGLang server over its native HTTP API
- `runtime.Runtime`: launches a local radixrt server and wraps its endpoint
- `engine.EngineBackend`: an in-process `radixrt.Engine`
- `openai.OpenAI`: an OpenAI-compatible API
"""
