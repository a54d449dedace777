"""Held-out evaluation of a trained adapter: accuracy (with its confidence interval) and loss, for classification
and for causal LM answers, and the prediction on every held-out row, so any two trials can be compared row by row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from peft_search.search.inputs.data import TokenizedSplits
from peft_search.search.worker.batches import pad_batch

CONFIDENCE = 0.95
INTERVAL_METHOD = "wilson"
"""statsmodels' ``proportion_confint`` method: Wilson's score interval keeps its coverage near 0 and 1."""


@dataclass(frozen=True)
class Evaluation:
    """One adapter on the held-out rows, in their order (``data/eval.parquet``)."""

    eval_loss: float
    correct: list[bool]
    predictions: list[int] = field(default_factory=list)
    """The predicted class (classification), the chosen answer (causal LM, closed answer set), or -1 (generated)."""
    labels: list[int] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / max(len(self.correct), 1)

    def metrics(self) -> dict[str, float]:
        """Accuracy, its 95 % Wilson interval (statsmodels) and the loss, keyed by the metric registry."""
        from statsmodels.stats.proportion import proportion_confint

        low, high = proportion_confint(
            sum(self.correct), max(len(self.correct), 1), alpha=1 - CONFIDENCE, method=INTERVAL_METHOD
        )
        return {
            "accuracy": self.accuracy,
            "accuracy_ci_low": float(low),
            "accuracy_ci_high": float(high),
            "eval_loss": self.eval_loss,
        }

    def rows(self) -> dict[str, Any]:
        """What the trial reports of each row (``PREDICTIONS_KEY``)."""
        return {
            "label": self.labels,
            "prediction": self.predictions,
            "correct": [int(c) for c in self.correct],
        }


@torch.no_grad()
def evaluate(model, data: TokenizedSplits, task: str, batch_size: int, device: torch.device) -> Evaluation:
    """Held-out accuracy and loss.

    Sequence classification: argmax of the logits. Causal LM: exact match of the answer, scored over the closed
    answer set when there is one (the highest total log-likelihood wins), generated greedily otherwise; the loss
    is on answer tokens only.
    """
    model.eval()
    if task == "sequence-classification":
        predictions: list[int] = []
        loss_sum = 0.0
        for i in range(0, len(data.eval), batch_size):
            batch = {
                k: v.to(device)
                for k, v in pad_batch(data.eval[i : i + batch_size], data.pad_token_id).items()
            }
            out = model(**batch)
            predictions += out.logits.argmax(-1).tolist()
            loss_sum += float(out.loss) * batch["labels"].shape[0]
        labels = [int(r["label"]) for r in data.eval]
        correct = [p == y for p, y in zip(predictions, labels, strict=True)]
        return Evaluation(loss_sum / len(data.eval), correct, predictions, labels)
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


def _evaluate_causal(model, data: TokenizedSplits, batch_size: int, device: torch.device) -> Evaluation:
    correct: list[bool] = []
    predictions: list[int] = []
    nll, ntok = 0.0, 0
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
            predictions.append(int(torch.cat(scores).argmax()))
            correct.append(predictions[-1] == row["label"])
        else:
            prompt = torch.tensor([row["input_ids"]], device=device)
            out = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=len(row["answer"]),
                do_sample=False,
                pad_token_id=data.pad_token_id,
            )
            predictions.append(-1)
            correct.append(out[0, prompt.shape[1] :].tolist() == row["answer"])
    labels = [int(r.get("label", -1)) for r in data.eval]
    return Evaluation(nll / max(ntok, 1), correct, predictions, labels)
