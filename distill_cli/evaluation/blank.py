"""What evaluate reports of a cloze model at its blank: how much word signal is there.

At each row's blank, the model's whole word distribution, read as its class logits are (its word
head at its cloze.json scale, T=1), over the split's first ``ROWS`` rows:
- ``entropy_share``: mean entropy as a share of log V (1.0: uniform, no signal);
- ``verbalizer_mass``: mean probability of the verbalizer words together (how much of the
  distribution the task's words hold);
- ``verbalizer_top1``: how often the top word is a verbalizer.
Against a teacher over the same vocabulary (a compressed student through its map):
- ``agreement``: how often the student's top word is the teacher's;
- ``kl``: mean KL(teacher ‖ student) of the two distributions (a compressed student: over its
  kept words, the teacher renormalised there).
Each model reads the rows with its own tokenizer; there is one blank per row, so the rows line up.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from distill_cli import tasks
from distill_cli.data import batching
from distill_cli.models import forward as heads

ROWS = 256


def distributions(model, tokenizer, task, split: str, cfg, word: tuple[str, float]):
    """Log-probabilities [rows, V] at the blank, and the verbalizer ids [K] (the model's own)."""
    mode, scale = word
    examples = task.splits[split]
    rows = examples.select(range(min(ROWS, len(examples))))
    features = tasks.of(task).eval_features(rows, task, tokenizer, cfg, split).loader_ds
    collate = batching.PadCollator(tokenizer.pad_token_id or 0)
    log_p, ids = [], None
    with torch.inference_mode():
        for batch in DataLoader(features, batch_size=64, collate_fn=collate):
            inputs, _ = batching.split_inputs(batch)
            out = heads.forward(model, inputs, heads.Needs(word=True), mode)
            blank = heads.blank_of(batch, scale)
            h = heads.at_blank(out.word_features, blank).float()
            z = h @ out.word_weight.float().t()
            if out.word_bias is not None:
                z = z + out.word_bias.float()
            log_p.append(F.log_softmax(z * scale, -1))
            ids = blank.ids[0]
    return torch.cat(log_p), ids


def figures(log_p: torch.Tensor, ids: torch.Tensor) -> dict:
    """A model's own figures at the blank."""
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1).mean() / math.log(log_p.shape[-1])
    return {
        "rows": len(log_p),
        "entropy_share": round(float(entropy), 4),
        "verbalizer_mass": round(float(p[:, ids].sum(-1).mean()), 4),
        "verbalizer_top1": round(float(torch.isin(log_p.argmax(-1), ids).float().mean()), 4),
    }


def against(student: torch.Tensor, teacher: torch.Tensor, vocab_index=None) -> dict:
    """The student's top-1 agreement with the teacher and KL(teacher ‖ student) at the blank;
    ``vocab_index``: a compressed student's rows as teacher ids."""
    top, t_top = student.argmax(-1), teacher.argmax(-1)
    if vocab_index is not None:
        top = vocab_index[top]  # the teacher id each kept word stands for
        teacher = F.log_softmax(teacher[:, vocab_index], -1)  # renormalised on the kept words
    kl = (teacher.exp() * (teacher - student)).sum(-1).mean()
    return {
        "agreement": round(float((top == t_top).float().mean()), 4),
        "kl": round(float(kl), 4),
    }


def describe(found: dict) -> str:
    line = (
        f"entropy {found['entropy_share']:.1%} of log V, verbalizers hold "
        f"{found['verbalizer_mass']:.1%} (the top word in {found['verbalizer_top1']:.1%} of rows)"
    )
    if "agreement" in found:
        line += f", top-1 agreement with the teacher {found['agreement']:.1%}, KL {found['kl']:.4f}"
    return line
