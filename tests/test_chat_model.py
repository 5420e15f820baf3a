"""The served model (phi3_pipeline/serving/chat_model.py) on a real Phi-shaped checkpoint: where its answers end."""

from __future__ import annotations

from phi3_pipeline.serving.chat_model import ChatModel
from tests.hub_fakes import make_checkpoint

QUESTION = [{"role": "user", "content": "Who founded Microsoft?"}]


def test_an_answer_ends_at_any_of_the_models_end_tokens_not_only_the_tokenizers(tmp_path):
    """Phi's tokenizer ends text with <|endoftext|>, but its turns end with <|end|>: its generation config names
    both. An answer stops at the first of them, and nothing after it is decoded."""
    from transformers import AutoModelForCausalLM

    checkpoint = make_checkpoint(tmp_path / "model")
    alone = ChatModel(checkpoint)
    prompt = alone.encode(QUESTION, 8)
    assert alone.replies([prompt], 0.0, 8)[0].completion_tokens == 8, "the fresh model never ends by itself"
    first, second = alone.model.generate(input_ids=alone._torch.tensor([prompt]), max_new_tokens=2, min_new_tokens=2,
                                         do_sample=False)[0, -2:].tolist()
    assert first != second

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    model.generation_config.eos_token_id = [second, alone.tokenizer.eos_token_id]  # as Phi's: [<|end|>, eos]
    model.save_pretrained(checkpoint)
    ended = ChatModel(checkpoint)
    replies = ended.replies([prompt, ended.encode(QUESTION + QUESTION, 8)], 0.0, 8)
    assert replies[0].completion_tokens == 2, "it ends at the configured end token"
    assert replies[0].text == ended.tokenizer.decode([first], skip_special_tokens=True).strip()


def test_a_server_that_holds_fewer_positions_than_the_model_refuses_longer_conversations(tmp_path):
    """The server fits its context to its memory (server_sizing.py): a conversation that fits the model's 512
    positions but not the 64 served is refused, naming what is served."""
    import pytest

    from phi3_pipeline.serving.chat_model import PromptTooLong

    checkpoint = make_checkpoint(tmp_path / "model")
    long_question = [{"role": "user", "content": "Who founded Microsoft? " * 12}]
    assert ChatModel(checkpoint).encode(long_question, 16)
    with pytest.raises(PromptTooLong, match=r"at most 48 input tokens \(64 positions\)"):
        ChatModel(checkpoint, max_context_tokens=64).encode(long_question, 16)
