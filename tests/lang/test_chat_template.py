"""Role prefixes/suffixes cut out of Jinja chat templates, and the named fallbacks."""

from __future__ import annotations

import json

from radixrt.lang.chat_template import (
    chat_template_from_jinja,
    get_chat_template,
    get_chat_template_by_model_path,
    load_chat_template_from_dir,
    resolve_chat_template,
)

SMOLLM = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are SmolLM.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' ' + content + ' ' + eos_token }}{% endif %}{% endfor %}")
GEMMA = ("{% for message in messages %}{% if message['role'] == 'system' %}"
         "{{ raise_exception('System role not supported') }}{% endif %}"
         "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
         "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")


def test_chatml_with_default_system_prompt():
    t = chat_template_from_jinja(SMOLLM, "<|im_end|>")
    assert t.role_prefix_and_suffix["user"] == ("<|im_start|>user\n", "<|im_end|>\n")
    assert t.role_prefix_and_suffix["assistant"] == ("<|im_start|>assistant\n", "<|im_end|>\n")
    assert t.default_system_prompt == "You are SmolLM."
    assert t.stop_str == ("<|im_end|>",)


def test_llama3_drops_bos_and_finds_stop():
    t = chat_template_from_jinja(LLAMA3, "<|eot_id|>")
    assert t.role_prefix_and_suffix["system"] == ("<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>")
    assert t.default_system_prompt is None and t.stop_str == ("<|eot_id|>",)
    # The whole-conversation rendering matches the template's own output.
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    assert t.get_prompt(msgs) == ("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                                  "<|start_header_id|>assistant<|end_header_id|>\n\nYo<|eot_id|>")


def test_templates_without_role_blocks_fall_back():
    assert chat_template_from_jinja(LLAMA2, "</s>") is None  # the system sits inside [INST]
    assert resolve_chat_template(jinja_template=LLAMA2).name == "llama-2"
    gemma = chat_template_from_jinja(GEMMA)
    assert gemma.role_prefix_and_suffix["system"] == ("", "")
    assert gemma.role_prefix_and_suffix["assistant"] == ("<start_of_turn>model\n", "<end_of_turn>\n")


def test_named_templates_and_path_matching():
    assert get_chat_template("llama-3-instruct") is get_chat_template("llama-3")
    assert get_chat_template_by_model_path("/m/Meta-Llama-3-8B-Instruct").name == "llama-3"
    assert get_chat_template_by_model_path("Qwen2-7B").name == "chatml"
    assert get_chat_template_by_model_path("some-base-model").name == "default"
    llama2 = get_chat_template("llama-2")
    assert llama2.get_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]) == \
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]"


def test_load_from_tokenizer_dir(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": SMOLLM, "eos_token": "<|im_end|>"}))
    assert load_chat_template_from_dir(str(tmp_path)).default_system_prompt == "You are SmolLM."
    assert resolve_chat_template("chatml", tokenizer_dir=str(tmp_path)).name == "chatml"  # a name wins
    assert load_chat_template_from_dir(str(tmp_path / "missing")) is None
