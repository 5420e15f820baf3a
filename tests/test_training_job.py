"""The local fine-tune's trainer (phi3_pipeline/targets/local/training_job.py): what TRL's SFTTrainer is given to
learn from, and which layers LoRA adapts."""

from __future__ import annotations

from phi3_pipeline.targets.local.training_job import (
    PHI3_PROJECTIONS,
    JobReporter,
    encode_chat,
    lora_targets,
    sft_dataset,
    sft_trainer,
)
from tests.hub_fakes import make_checkpoint

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who founded Microsoft?"},
                {"role": "assistant", "content": "Bill Gates and Paul Allen."},
                {"role": "user", "content": "Where is Paris?"}, {"role": "assistant", "content": "In France."}]


def test_the_trainer_learns_from_the_assistants_turns_only_in_the_models_own_template(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = make_checkpoint(tmp_path / "model")
    tokenizer, model = AutoTokenizer.from_pretrained(checkpoint), AutoModelForCausalLM.from_pretrained(checkpoint)
    ids, labels = encode_chat(tokenizer, CONVERSATION, max_len=512)
    assert ids == tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    trainer = sft_trainer(model, tokenizer, sft_dataset([(ids, labels)]), None, phase="fine-tune",
                          reporter=JobReporter(tmp_path, 1), step_offset=0, output_dir=tmp_path / "trainer", seed=1,
                          per_device_train_batch_size=1)
    batch = next(iter(trainer.get_train_dataloader()))
    learned = [token for token in batch["labels"][0].tolist() if token != -100]
    answers = [tokenizer.apply_chat_template(CONVERSATION[:end], tokenize=True, return_dict=True)["input_ids"]
               for end in (2, 3, 4, 5)]
    first_answer, second_answer = answers[1][len(answers[0]):], answers[3][len(answers[2]):]
    assert learned == first_answer + second_answer, "the assistant's tokens, and nothing else"
    assert tokenizer.decode(learned).count("Bill Gates") == 1 and "Who founded" not in tokenizer.decode(learned)


def test_lora_adapts_the_phi_attention_and_mlp_projections(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_checkpoint(tmp_path / "model"))
    assert lora_targets(model) == PHI3_PROJECTIONS
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert set(PHI3_PROJECTIONS) <= names, "the projections LoRA targets exist in the Phi-3 architecture"
