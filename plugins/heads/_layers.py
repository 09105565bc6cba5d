"""Small building blocks and option checks shared by the built-in heads (not a plugin)."""
from torch import nn

from harness.types import SIMILARITIES


def hidden_width(head: str, dim: int, hidden) -> int | None:
    """``hidden``: None (no hidden layer), a width, or ``"<k>x"`` = k times the input dim (seeds: ``"2x"``)."""
    if hidden is None or hidden is False:
        return None
    if isinstance(hidden, str) and hidden.endswith("x"):
        try:
            return max(1, round(float(hidden[:-1]) * dim))
        except ValueError:
            pass
    elif isinstance(hidden, int) and not isinstance(hidden, bool) and hidden > 0:
        return hidden
    raise ValueError(f"{head}: hidden must be a positive width or '<k>x' (k times dim, e.g. '2x'), got {hidden!r}")


def check_dropout(head: str, dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"{head}: dropout must be a number in [0, 1), got {dropout!r}")
    return float(dropout)


SCORE_WITH = ("predictor", "projection")


def mlp(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    drop = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), *drop, nn.Linear(hidden, dim))


def check_scoring(head: str, similarity: str, score_with: str, projection: bool) -> None:
    """Options of the predictor heads (respred, isopred): how the query side is scored."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"{head}: similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if score_with not in SCORE_WITH:
        raise ValueError(f"{head}: score_with must be one of {SCORE_WITH}, got {score_with!r}")
    if score_with == "projection" and not projection:
        raise ValueError(f"{head}: score_with='projection' needs projection=True (without a projection "
                         "the query side would be the frozen encoder itself)")
