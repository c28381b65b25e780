"""Quick start: MoRE on the real MiniLM-L6 encoder with three small made-up tasks, no network needed.

Trains one MoRE adapter set for all tasks jointly, prints the task accuracies, the rank each task
selected and the parameter counts, then merges one task into a plain model and checks that the merged
model computes what the adapter computes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import AutoModel

from rankmix import MoREConfig, get_model
from rankmix.pretrained import minilm_path

TASKS = ["first-token-even", "contains-7", "length-parity"]


def make_batch(task: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token sequences from a small vocabulary window and a label that each task reads differently."""
    ids = torch.randint(1000, 1016, (n, 12), generator=gen)
    lengths = torch.randint(6, 13, (n,), generator=gen)
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    ids = ids * mask
    if task == 0:
        labels = (ids[:, 0] % 2 == 0).long()
    elif task == 1:
        labels = ((ids == 1007) & mask.bool()).any(1).long()
    else:
        labels = (lengths % 2).long()
    return ids, mask, labels


def main() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    base = AutoModel.from_pretrained(minilm_path())
    pristine = copy.deepcopy(base)
    model = get_model(base, MoREConfig(tasks=TASKS, max_rank=8, target_modules=["query", "value"]))
    heads = nn.ModuleList(nn.Linear(384, 2) for _ in TASKS)  # per-task classification heads
    params = [p for p in model.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)

    def logits(task: int, ids, mask):
        out = model(input_ids=ids, attention_mask=mask, task_ids=[task] * len(ids))
        return heads[task](out.last_hidden_state[:, 0]), out

    model.train()
    for step in range(90):
        task = step % len(TASKS)
        ids, mask, labels = make_batch(task, 16, gen)
        head_logits, out = logits(task, ids, mask)
        aux = sum(w * out.aux_losses[k] for k, w in model.adapter_config.aux_weights().items())
        loss = nn.functional.cross_entropy(head_logits, labels) + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 30 == 29:
            print(
                f"step {step + 1:3d}  loss {loss.item():.3f}  contrastive {out.aux_losses['contrastive']:.3f}"
            )

    model.eval()
    ranks = model.selected_ranks()
    print(f"\n{'task':<18} {'accuracy':>8} {'mean selected rank':>19}")
    with torch.no_grad():
        for t, task in enumerate(TASKS):
            ids, mask, labels = make_batch(t, 200, gen)
            acc = (logits(t, ids, mask)[0].argmax(-1) == labels).float().mean().item()
            mean_rank = sum(ranks[task].values()) / len(ranks[task])
            print(f"{task:<18} {acc:8.2f} {mean_rank:19.2f}")
    print("\nparameter counts:", model.parameter_counts())

    with torch.no_grad():
        ids, mask, _ = make_batch(1, 8, gen)
        native = model(input_ids=ids, attention_mask=mask, task_ids=[1] * 8).last_hidden_state
        merged = copy.deepcopy(model).merge_and_unload(task=TASKS[1])
        same = torch.allclose(merged(input_ids=ids, attention_mask=mask).last_hidden_state, native, atol=1e-4)
        differs = not torch.allclose(pristine(input_ids=ids, attention_mask=mask).last_hidden_state, native)
    print(f"merged '{TASKS[1]}' model equals the adapter: {same}; differs from the base model: {differs}")


if __name__ == "__main__":
    main()
