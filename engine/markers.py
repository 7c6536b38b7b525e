"""The lines a training process prints for the runner to read, each `TAG value` on stdout, flushed
at once: defined here once, printed by the engine, parsed by runner.output. No torch.

    RESULT_DIR <folder>          a fold's result folder is published
    RESULT_EXISTS <folder>       a result folder exists that this run may not replace (not retried)
    NOT_FINITE <fold, phase>     a phase's validation loss was NaN or inf: the same settings diverge again (not retried)
    BASE_KEY <key>, BASE_MODEL <path>   a base_only run's base model is in the cache
    BASE_TRAINED <key>           this process trained (not reused) that base model
    MEMBER_DONE <i>              pack member i has finished (its lines above are its own)
    PACK_OUT_OF_MEMORY <size>    the pack ran out of device memory (its members run in smaller packs)
"""
RESULT_DIR = "RESULT_DIR"
RESULT_EXISTS = "RESULT_EXISTS"
NOT_FINITE = "NOT_FINITE"
BASE_KEY = "BASE_KEY"
BASE_MODEL = "BASE_MODEL"
BASE_TRAINED = "BASE_TRAINED"
MEMBER_DONE = "MEMBER_DONE"
OUT_OF_MEMORY = "PACK_OUT_OF_MEMORY"


def line(tag, value):
    return f"{tag} {value}"


def say(tag, value):
    """Print one marker line now: the runner reads the output as it streams."""
    print(line(tag, value), flush=True)
