"""Models: the one-layer softmax attention model of the ℓp-AttGD theory."""

from attnopt.models.attention import (
    OneLayerAttention,
    attention_output,
    attention_scores,
    logistic_loss,
)

__all__ = ["OneLayerAttention", "attention_scores", "attention_output", "logistic_loss"]
