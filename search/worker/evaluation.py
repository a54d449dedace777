"""Held-out evaluation of a trained adapter: accuracy and loss, for classification and for causal LM answers."""

from __future__ import annotations

import torch

from search.inputs.data import TokenizedSplits
from search.worker.batches import pad_batch


@torch.no_grad()
def evaluate(
    model, data: TokenizedSplits, task: str, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Held-out accuracy and loss.

    Sequence classification: argmax of the logits. Causal LM: exact match of the answer, scored over the closed
    answer set when there is one (the highest total log-likelihood wins), generated greedily otherwise; the loss
    is on answer tokens only.
    """
    model.eval()
    if task == "sequence-classification":
        correct, loss_sum = 0, 0.0
        for i in range(0, len(data.eval), batch_size):
            batch = {
                k: v.to(device)
                for k, v in pad_batch(data.eval[i : i + batch_size], data.pad_token_id).items()
            }
            out = model(**batch)
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            loss_sum += float(out.loss) * batch["labels"].shape[0]
        n = len(data.eval)
        return {"accuracy": correct / n, "eval_loss": loss_sum / n}
    return _evaluate_causal(model, data, batch_size, device)


def _sequence_logprob(model, rows, pad_id, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's ``labels`` tokens, and the number of those tokens."""
    batch = {k: v.to(device) for k, v in pad_batch(rows, pad_id).items()}
    labels = batch.pop("labels")
    # Prompt-learning adapters prepend virtual tokens to the logits: keep the positions of the real tokens.
    logits = model(**batch).logits[:, -labels.shape[1] :][:, :-1].float()
    target = labels[:, 1:]
    logp = torch.log_softmax(logits, -1)
    mask = target != -100
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    return picked.sum(-1), mask.sum(-1)


def _evaluate_causal(model, data: TokenizedSplits, batch_size: int, device: torch.device) -> dict[str, float]:
    correct, nll, ntok = 0, 0.0, 0
    for row in data.eval:
        gold = {
            "input_ids": row["input_ids"] + row["answer"],
            "labels": [-100] * len(row["input_ids"]) + row["answer"],
        }
        lp, n = _sequence_logprob(model, [gold], data.pad_token_id, device)
        nll -= float(lp.sum())
        ntok += int(n.sum())
        if data.answer_ids:
            options = [
                {"input_ids": row["input_ids"] + a, "labels": [-100] * len(row["input_ids"]) + a}
                for a in data.answer_ids
            ]
            scores = []
            for i in range(0, len(options), batch_size):
                scores.append(
                    _sequence_logprob(model, options[i : i + batch_size], data.pad_token_id, device)[0]
                )
            correct += int(int(torch.cat(scores).argmax()) == row["label"])
        else:
            prompt = torch.tensor([row["input_ids"]], device=device)
            out = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=len(row["answer"]),
                do_sample=False,
                pad_token_id=data.pad_token_id,
            )
            correct += int(out[0, prompt.shape[1] :].tolist() == row["answer"])
    n = max(len(data.eval), 1)
    return {"accuracy": correct / n, "eval_loss": nll / max(ntok, 1)}
