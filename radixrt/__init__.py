"""radixrt: an LLM serving runtime built around prefix sharing."""

from __future__ import annotations

from radixrt.version import __version__

# The frontend language, re-exported under SGLang's names so that `import radixrt as sgl`
# runs SGLang programs. Resolved on first use: `import radixrt` stays cheap.
_LANG_EXPORTS = frozenset({
    "function", "gen", "gen_int", "gen_string", "select", "image", "video",
    "system", "user", "assistant", "system_begin", "system_end", "user_begin", "user_end",
    "assistant_begin", "assistant_end", "set_default_backend", "flush_cache", "get_server_info",
    "Runtime", "RuntimeEndpoint", "OpenAI", "EngineBackend", "global_config",
    "REGEX_INT", "REGEX_FLOAT", "REGEX_BOOL", "REGEX_STR",
    "token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized",
    "ChoicesSamplingMethod", "SglFunction", "ProgramState",
})

__all__ = ["Engine", "ServerArgs", "SamplingParams", "__version__", "lang", *sorted(_LANG_EXPORTS)]


def __getattr__(name: str):
    # Lazy imports keep `import radixrt` cheap (torch is only loaded when needed).
    if name == "Engine":
        from radixrt.entrypoints.engine import Engine

        return Engine
    if name == "ServerArgs":
        from radixrt.config import ServerArgs

        return ServerArgs
    if name == "SamplingParams":
        from radixrt.sampling_params import SamplingParams

        return SamplingParams
    if name == "lang":
        import radixrt.lang

        return radixrt.lang
    if name in _LANG_EXPORTS:
        import radixrt.lang

        return getattr(radixrt.lang, name)
    raise AttributeError(f"module 'radixrt' has no attribute {name!r}")
