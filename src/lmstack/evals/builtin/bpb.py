"""`val_bpb`: bits per byte of held-out corpus text -- the pretraining metric, as an eval.

Held-out means the data layer's val split: documents whose id hashes below `val_fraction`, exactly
the rule `lmstack prepare` uses, so a model trained on the train shards never saw these bytes.
Documents are cut into chunks that fit a small model's context; chunks of one document share a
group, so the standard error is clustered by document.
"""

from __future__ import annotations

from lmstack.data.prepare import val_score
from lmstack.data.sources import iter_documents
from lmstack.evals.sample import Sample
from lmstack.evals.scorers import bpb
from lmstack.evals.solvers import bits_per_byte
from lmstack.evals.task import Task, TaskConfig, task


def held_out_chunks(source: str, val_fraction: float, chunk_chars: int, n: int, per_doc: int) -> list[Sample]:
    samples: list[Sample] = []
    for doc in iter_documents(source):
        if val_score(doc.id) >= val_fraction:
            continue
        for start in range(0, len(doc.text) - chunk_chars // 2, chunk_chars)[:per_doc]:
            samples.append(Sample(id=f"{doc.id}@{start}", input=doc.text[start:start + chunk_chars], group=doc.id))
            if len(samples) == n:
                return samples
    return samples


@task
def val_bpb(source: str = "stdlib", val_fraction: float = 0.05, chunk_chars: int = 400, n: int = 64,
            per_doc: int = 4):
    """Bits per byte on held-out corpus text (lower is better)."""
    return Task(dataset=held_out_chunks(source, val_fraction, chunk_chars, n, per_doc), solver=bits_per_byte(),
                scorer=bpb(), config=TaskConfig(max_tokens=1))
