"""The argparse types of the training flags (engine.flags): each parses one value or says, in one
line, what it expected. Every float flag parses with finite_float (a NaN or inf is refused)."""
import argparse
import math

MODEL_NAMES = ("medium", "test", "test_pool4")  # engine.models.MODELS (which needs torch) builds them
# Built-in models whose fixed dropout drew its masks from torch's global generator before the phase
# generators drew them (engine.models.SeededDropout): their base keys say so (engine.base_cache).
SEEDED_DROPOUT_MODELS = ("medium",)


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def positive_int_or(word, text):
    """text when it is word, else a whole number >= 1."""
    if text == word:
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected '{word}' or a whole number >= 1, got {text!r}") from None


def epoch_cap(text):
    """--max_epochs: a whole number >= 1, or 'none' (each phase runs until its patience ends)."""
    return positive_int_or("none", text)


def fold_value(text):
    """--fold: an index, or a participant's name (engine.data.fold_index resolves it)."""
    return int(text) if text.lstrip("-").isdigit() else text


def model_value(text):
    """--model: a built-in name, or a lab's factory as FILE.py:FACTORY or package.module:FACTORY."""
    if text in MODEL_NAMES or ":" in text:
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(MODEL_NAMES)}, or FILE.py:FACTORY or "
                                     f"package.module:FACTORY for your own model, got {text!r}")


def dropout_rate(text):
    value = finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1), got {text!r}")
    return value


def positive_float(text):
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def finite_float(text):
    """What every float flag parses with: a NaN or inf would only come back as NaN results."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def fraction(text):
    """A share in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1] such as 0.25, got {text!r}") from None
    if not 0 < value <= 1:
        hint = f" (write {text}% as {value / 100:g})" if 1 < value <= 100 else ""
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], got {text!r}{hint}")
    return value


def n_base(text):
    """--n_base_participants: 'all' or a positive integer."""
    return positive_int_or("all", text)
