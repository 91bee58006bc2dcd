"""A cloze model (a masked or causal LM with ``cloze.json``) as export sees it: token inputs in,
the class logits out (the word logits at the blank, restricted to the verbalizer ids), so that
onnx.py and int8.py trace and check it as one graph like any classifier."""

from __future__ import annotations

import inspect

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from distill_cli.models import forward as heads
from distill_cli.tasks import cloze
from distill_cli.tasks.base import SENTENCES


def pair_template(template: str) -> bool:
    return "{text_b}" in template


class ClozeClassifier(torch.nn.Module):
    """``model`` read at its blank: the mask token's position (encoders) or the last real token
    (causal LMs: ``attention_mask.sum(1) - 1``, so inputs are right-padded), through the word
    head it was trained with (cloze.json's ``word_logits`` and ``word_logit_scale``)."""

    def __init__(self, model, tokenizer, saved: dict):
        super().__init__()
        self.model = model
        prompt = cloze.saved_prompt(saved)
        cloze.check_reader(model.config, tokenizer, "the model")
        self.mask_id = None if cloze.reads_next_token(tokenizer) else tokenizer.mask_token_id
        self.num_labels = len(prompt.labels)
        self.register_buffer("ids", torch.tensor(cloze.verbalizer_ids(prompt, tokenizer)))
        requested = saved.get("word_logits") or "auto"
        self.mode = heads.word_mode(requested, model, prefer_head=True)
        self.scale = float(saved.get("word_logit_scale", 1.0))
        params = inspect.signature(model.forward).parameters
        self.takes_token_types = "token_type_ids" in params
        texts = [[s, s] if pair_template(prompt.template) else [s] for s in SENTENCES]
        # what the export is verified on: the test sentences in the template
        self.samples = tuple(cloze.render(prompt.template, t, tokenizer) for t in texts)

    @property
    def config(self):
        return self.model.config

    def set_attn_implementation(self, implementation: str) -> None:
        self.model.set_attn_implementation(implementation)

    def forward(self, input_ids, attention_mask, token_type_ids=None, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        if token_type_ids is not None and self.takes_token_types:
            inputs["token_type_ids"] = token_type_ids
        if self.mask_id is None:
            positions = attention_mask.sum(1) - 1
        else:
            positions = (input_ids == self.mask_id).long().argmax(1)
        ids = self.ids.unsqueeze(0).expand(input_ids.shape[0], -1)
        blank = heads.Blank(positions, ids, self.scale)
        logits = heads.read_blank(self.model, inputs, blank, self.mode).logits
        # a fixed width, so that the graph declares [batch, num_labels] (gathers leave it open)
        return SequenceClassifierOutput(logits=logits.reshape(-1, self.num_labels))
