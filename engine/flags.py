"""Every training flag once: its parser definition, its role and the modes it applies to.

No torch and no paramiko, so anything that plans runs can read it. The training
parser (engine.cli.build_parser), the base-model key (base_cache.key_settings),
the grid's collapse rules (runner.grid), the report's configuration columns
(report.runs) and the flags a base_only job leaves out all derive from
FLAGS: adding a flag here with role "base" puts it in the base key, nothing else
to edit. A job (an object of flags, as in a jobs JSON) becomes command-line tokens
here too (job_argv), and the flags the members of a pack may differ in are named
here (MAY_DIFFER).

Roles:
- base: decides the base model, so it is part of the base key (the target phase
  may read it too). participants, fold and n_base_participants enter the key as
  the resolved, sorted base participants; preset through the values it resolves to.
- target: only the target phase (or which phases run); a base_only job leaves it out.
- output: where results go and bookkeeping; never part of a configuration.
- runtime: device and progress display; the numbers do not depend on it beyond float rounding.
  A flag with key_unless_default (--cpu_kernels) enters the base key too, only when it is not
  its default, so the keys made before it entered the key stay.

Every float flag refuses NaN and inf (finite_float, applied in add_arguments).
"""
from dataclasses import dataclass, field

from engine import modes
from engine.fileio import ConfigError
from engine.presets import ARCHITECTURE_FLAGS, PRESETS, PROJECT_DEFAULTS, preset_values
from engine.flag_types import (MODEL_NAMES, dropout_rate, epoch_cap, finite_float, fold_value, fraction, model_value,  # noqa: F401
                               n_base, positive_float, positive_int)

ROLES = ("base", "target", "output", "runtime")
MODES = modes.names(target_phase=True)  # train.py's choices; oct1_train.py adds base_only
BASE_MODES = modes.names(base_phase=True)
ALL_MODES = modes.names()
EPOCH_RULES = ("target_pass", "shortest")
COUNT_RULES = ("round", "floor")
DEMO_DATA_PATH = "data/demo"
NOT_FLAGS = ("job_id", "base_key")  # what a jobs JSON adds to a job's flags
# Flags in which the members of one pack (engine.pack) may differ; every other flag must be equal.
MAY_DIFFER = {"fold", "seed", "lr", "mode", "target_data_pct", "target_batch_pct", "n_base_participants",
              "early_stopping_patience", "early_stopping_patience_target", "prefix", "overwrite", "run_token",
              "seed_finetune", "pos_weight", "class_weights", "early_stopping_metric"}



def share_count(pct, n, rule):
    """How many of n windows a share pct is: Python's round (halves to even), or
    "floor", the original pipeline's int(pct * n)."""
    if rule not in COUNT_RULES:
        raise ValueError(f"unknown count rule {rule!r}; choose one of {COUNT_RULES}")
    return int(pct * n) if rule == "floor" else round(pct * n)


def target_windows_per_batch(args):
    """Target windows in every fine-tuning batch under --target_batch_pct, None without it."""
    pct = getattr(args, "target_batch_pct", None)
    return None if pct is None else share_count(pct, args.batch_size, args.target_count)


# ---------------------------------------------------------------- when a flag matters

def _augmenting(settings):
    return bool(settings["use_augmentation"])


def _composing(settings):
    return settings["target_batch_pct"] is not None


def _counting(settings):
    # The count rule turns target shares into counts: target_batch_pct, or target_data_pct below 1.
    return _composing(settings) or settings["target_data_pct"] < 1


# ---------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Flag:
    name: str
    role: str
    help: str
    default: object = None
    default_text: str = ""  # how help shows the default, where str(default) would not say it
    modes: tuple = ALL_MODES  # the modes whose work it can change
    needs: object = None  # settings -> bool: it matters only when this holds
    keyed: bool = True  # role base: enters the base key as its own value
    key_unless_default: bool = False  # any role: enters the base key, but only when not its default
    enhanced: bool = False  # oct1_train.py only
    base_job: bool = None  # kept in a base_only job's flags (default: role is base or runtime)
    options: dict = field(default_factory=dict)  # the rest of add_argument's keywords

    def kept_by_base_job(self):
        return self.role in ("base", "runtime") if self.base_job is None else self.base_job


def default_of(flag):
    """What a flag is when nothing sets it: its preset-free project value for a preset flag."""
    return PROJECT_DEFAULTS.get(flag.name, flag.default)


def _preset_default(name):
    def text(value):
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)
    by_preset = "".join(f"; {text(values[name])} with --preset {preset}"
                        for preset, values in PRESETS.items() if name in values)
    return f"{text(PROJECT_DEFAULTS[name])}{by_preset}"


def _preset_flag(name, role, help, **more):
    """A flag whose default --preset decides (None until resolve_preset fills it)."""
    return Flag(name, role, help, default_text=_preset_default(name), **more)


FLAGS = (
    Flag("preset", "base", "original: every behaviour of the original pipeline at once (lr, patience, validation "
         "subsets, batch composition, augmentation); manuscript: its authors' final protocol (the 64-channel "
         "dilated model with dropout 0.5, batch 32, early stopping on F1 with patience 50 and 200, no epoch cap, "
         "augmentation on); explicit flags override it", default_text="none",
         keyed=False, options={"choices": sorted(PRESETS)}),
    Flag("data_path", "base", "folder of NAME_{train,val,test}.pt files; the demo dataset is created on first use",
         default=DEMO_DATA_PATH),
    Flag("participants", "base", "participants to use, in order", default_text="all found, sorted",
         keyed=False, options={"nargs": "+"}),
    Flag("fold", "base", "the target participant: its index, or its name", default=0, keyed=False,
         options={"type": fold_value}),
    Flag("n_base_participants", "base", "use the first N other participants as the base", default="all",
         keyed=False, modes=BASE_MODES, options={"type": n_base}),
    Flag("mode", "target", "which phases run and on what the target phase trains (engine/modes.py)", default=modes.DEFAULT,
         base_job=True, options={"choices": MODES}),
    Flag("model", "base", f"model architecture: {', '.join(MODEL_NAMES)} (engine/models.py), or your own as "
         "FILE.py:FACTORY or package.module:FACTORY (engine/user_model.py)", default="test",
         options={"type": model_value}),
    _preset_flag("base_channels", "base", "--model test: channels C of its blocks (the last has 2C)", keyed=False,
                 key_unless_default=True, options={"type": positive_int}),
    Flag("num_blocks", "base", "--model test: convolution blocks (at least 2)", default=4, keyed=False,
         key_unless_default=True, options={"type": positive_int}),
    _preset_flag("use_dilation", "base", "--model test: block i dilates its convolution by 2^i", keyed=False,
                 key_unless_default=True, options={"action": "store_true"}),
    Flag("use_residual", "base", "--model test: each block adds its input (1x1 convolution where the channels "
         "change)", default=False, default_text="off", keyed=False, key_unless_default=True,
         options={"action": "store_true"}),
    _preset_flag("dropout", "base", "--model test: dropout before the final linear layer, masks drawn from the "
                 "phase's own seeded generator", keyed=False, key_unless_default=True, options={"type": dropout_rate}),
    Flag("model_args", "base", "your own model's factory keyword arguments, a JSON object (its source's hash "
         "and these enter the base key)", default_text="none", keyed=False, options={"metavar": "JSON"}),
    Flag("window_size", "base", "must equal the data's window length when given", default_text="the data's",
         options={"type": positive_int}),
    _preset_flag("batch_size", "base", "windows per batch", options={"type": positive_int}),
    _preset_flag("lr", "base", "AdamW learning rate", options={"type": float}),
    _preset_flag("max_epochs", "base", "bound on the epochs of each phase; none: each runs until its patience ends",
                 options={"type": epoch_cap}),
    _preset_flag("early_stopping_patience", "base", "base phase's early-stopping patience, in epochs",
                 modes=BASE_MODES, options={"type": positive_int}),
    _preset_flag("early_stopping_patience_target", "target", "target phase's early-stopping patience, in epochs",
                 modes=MODES, options={"type": positive_int}),
    _preset_flag("early_stopping_metric", "base", "what both phases early-stop on and keep the best "
                 "checkpoint by: the lowest validation loss, or the highest validation F1 (the first epoch that "
                 "reaches it)", keyed=False, key_unless_default=True, options={"choices": ("loss", "f1")}),
    _preset_flag("base_val_pct", "base", "share of the base participants' test split the base phase "
                 "early-stops on, seeded", modes=BASE_MODES, options={"type": fraction}),
    _preset_flag("target_val_pct", "target", "share of the target's val split the target phase early-stops on, "
                 "seeded", modes=MODES, options={"type": fraction}),
    Flag("target_data_pct", "target", "share of the target's train split used (seeded)", default=1.0,
         modes=MODES, options={"type": fraction}),
    _preset_flag("target_count", "target", "how a share of target windows becomes a count, for "
                 "--target_data_pct and --target_batch_pct: round to nearest, or floor like the original's int()",
                 modes=MODES, needs=_counting, options={"choices": COUNT_RULES}),
    _preset_flag("use_augmentation", "base", "jitter, magnitude scaling and time warp",
                 options={"action": "store_true"}),
    _preset_flag("augmentation", "base", "window: each transform touches each window with probability "
                 "--aug_prob; batch (the original's): with probability --aug_prob one transform, picked at "
                 "random, touches the whole batch", needs=_augmenting, options={"choices": ("window", "batch")}),
    _preset_flag("jitter_std", "base", "standard deviation of the jitter", needs=_augmenting,
                 options={"type": float}),
    _preset_flag("magnitude_range", "base", "range of the magnitude scaling factor", needs=_augmenting,
                 options={"type": float, "nargs": 2, "metavar": ("LOW", "HIGH")}),
    _preset_flag("aug_prob", "base", "chance of augmentation", needs=_augmenting, options={"type": float}),
    Flag("seed", "base", "seeds every draw; a CPU run repeats to the bit", default=42, options={"type": int}),
    Flag("seed_finetune", "target", "seeds every draw of the target phase instead (its data share, validation "
         "share, batches, augmentation, dropout); not part of the base key, so several fine-tuning seeds share "
         "one base model", default_text="--seed", modes=MODES, options={"type": int}),
    Flag("pos_weight", "target", "weight of the positive class in the target phase's loss (training and "
         "validation), BCE's pos_weight", default_text="none", modes=MODES, options={"type": positive_float}),
    Flag("class_weights", "target", "a recognizer's (K >= 3 classes): the weight of each class in the target "
         "phase's loss (training and validation), cross-entropy's weight, K numbers in class id order",
         default_text="none", modes=MODES, options={"type": positive_float, "nargs": "+", "metavar": "W"}),
    Flag("finetune_layers", "target", "which parameters the target phase trains: all, or the head only (the "
         "model's final linear layer; your own model's `head` attribute, else its last nn.Linear)",
         default="all", modes=modes.names(from_base=True), options={"choices": ("all", "head")}),
    Flag("device", "runtime", "auto (CUDA when present, else CPU), cpu, cuda, cuda:N or N", default="auto"),
    Flag("prefix", "output", "results go to EXPERIMENTS_DIR/PREFIX/fold{k}_{target}/", default="experiment"),
    Flag("experiments_dir", "output", "folder of all result folders", default="experiments"),
    Flag("overwrite", "output", "replace an existing result folder", default=False, default_text="off",
         options={"action": "store_true"}),
    Flag("run_token", "output", "set by the runner: a result folder that records this same token (left by an "
         "earlier attempt of this job in the same run) may be replaced without --overwrite", default_text="none",
         options={"metavar": "TOKEN"}),
    Flag("progress_every", "runtime", "without a terminal, print an epoch line at most this often "
         "(always the first epoch)", default=30.0, options={"type": float, "metavar": "SECONDS"}),
    # Speed only: these flags change what is computed by float rounding at most.
    Flag("cuda_graphs", "runtime", "replay each training and evaluation step from a captured CUDA graph (auto: on "
         "for CUDA, off for the CPU; a failed capture falls back to eager with a log line, unless 'on')",
         default="auto", options={"choices": ("auto", "on", "off")}),
    Flag("cpu_kernels", "runtime", "fast: on the CPU the model's blocks run as channels-last Conv2d with a "
         "LayerNorm over contiguous rows (the same model and math, faster); reference: the engine's historic "
         "Conv1d and transposed LayerNorm, bit for bit the results of earlier releases (CUDA always uses these); "
         "reference enters the base key, so it never reuses a base model trained with the fast kernels",
         default="fast", key_unless_default=True, options={"choices": ("fast", "reference")}),
    Flag("threads", "runtime", "torch's intra-op CPU threads", default_text="torch's choice, which follows "
         "OMP_NUM_THREADS", options={"type": positive_int}),
    Flag("target_batch_pct", "target", "exact share of target windows in every fine-tuning batch",
         default_text="none: batches mix base and target windows as they come",
         modes=modes.names(mixed_batches=True), enhanced=True, options={"type": fraction}),
    _preset_flag("epoch_rule", "target", "with --target_batch_pct: an epoch is one pass over the target windows, "
                 "or ends when the shorter side runs out, like the original", modes=modes.names(mixed_batches=True),
                 needs=_composing, enhanced=True, options={"choices": EPOCH_RULES}),
    Flag("base_cache_dir", "output", "the shared base-model cache", default="experiments/base_models",
         enhanced=True, base_job=True),
    Flag("no_base_cache", "output", "always train the base model, store nothing", default=False,
         default_text="off", enhanced=True, options={"action": "store_true"}),
    Flag("print_base_key", "output", "print the base-model key of these settings and exit (needs no data when "
         "--participants is given)", default=False, default_text="off", enhanced=True,
         options={"action": "store_true"}),
)
BY_NAME = {flag.name: flag for flag in FLAGS}


def flags_of(enhanced):
    """The flags of train.py, or with `enhanced` of oct1_train.py."""
    return [flag for flag in FLAGS if enhanced or not flag.enhanced]


def add_arguments(parser, enhanced):
    """Add the training flags to an argparse parser."""
    for flag in flags_of(enhanced):
        options = dict(flag.options)
        if options.get("type") is float:
            options["type"] = finite_float
        if flag.name == "mode" and enhanced:
            options["choices"] = ALL_MODES
        shown = flag.default_text or str(flag.default)
        parser.add_argument(f"--{flag.name}", default=flag.default, help=f"{flag.help} (default {shown})",
                            **options)


def prefix_problem(prefix):
    """Why a --prefix would put results outside --experiments_dir (absolute, or climbing out with
    '..'), or None."""
    parts = str(prefix).replace("\\", "/").split("/")
    if str(prefix).startswith("/") or ".." in parts:
        return (f"--prefix {prefix!r}: results must stay inside --experiments_dir; give a relative path "
                f"without '..'")
    return None


def check_args(args):
    """The flag combinations argparse cannot check by itself; ConfigError in one line."""
    problem = prefix_problem(args.prefix)
    if problem:
        raise ConfigError(problem)
    if args.magnitude_range[0] > args.magnitude_range[1] or args.magnitude_range[0] <= 0:
        raise ConfigError(f"--magnitude_range {args.magnitude_range}: need 0 < LOW <= HIGH")
    if not 0 <= args.aug_prob <= 1:
        raise ConfigError(f"--aug_prob {args.aug_prob}: must be within [0, 1]")
    pct = getattr(args, "target_batch_pct", None)
    if pct is not None and not modes.mode_of(args.mode).mixed_batches:
        raise ConfigError(f"--target_batch_pct works only with --mode {' or '.join(modes.names(mixed_batches=True))}"
                          f", not {args.mode}")
    if pct is not None:
        k = target_windows_per_batch(args)
        if not 0 < k < args.batch_size:
            raise ConfigError(f"--target_batch_pct {pct} of --batch_size {args.batch_size} gives {k} target "
                              f"windows per batch (--target_count {args.target_count}); both sides need at least one")
    if not modes.mode_of(args.mode).target_phase and args.no_base_cache:
        raise ConfigError(f"--mode {args.mode} stores the base model in the cache; it cannot run with --no_base_cache")
    check_model_flags(args)
    if getattr(args, "pos_weight", None) is not None and getattr(args, "class_weights", None) is not None:
        raise ConfigError("--pos_weight weighs a detector's positive class, --class_weights a recognizer's classes: "
                          "give one of them")


def check_model_flags(args):
    """The architecture flags shape `test` only; --model_args is for your own model's factory;
    --finetune_layers head needs a base model to fine-tune."""
    if args.model != "test":
        changed = [f"--{name}" for name in ARCHITECTURE_FLAGS if getattr(args, name) != PROJECT_DEFAULTS.get(
            name, BY_NAME[name].default)]
        if changed:
            raise ConfigError(f"{' '.join(changed)} shape --model test only, not --model {args.model}")
    if ":" not in args.model and args.model_args is not None:
        raise ConfigError(f"--model_args is for your own model's factory (--model FILE.py:FACTORY), "
                          f"not --model {args.model}")
    if args.num_blocks < 2:
        raise ConfigError(f"--num_blocks {args.num_blocks}: the model needs at least 2 (a first and a last block)")
    if args.finetune_layers == "head" and not modes.mode_of(args.mode).from_base:
        raise ConfigError(f"--finetune_layers head fine-tunes a base model's head; --mode {args.mode} starts "
                          f"from a fresh model (use {' or '.join(modes.names(from_base=True))})")


def job_argv(job):
    """A job's flags as command-line tokens, e.g. ['--fold', '0', '--participants', 'a', 'b'].

    job_id and base_key are not flags; true is a bare flag; false and null are left
    out; a list gives its values after the flag (an empty list is left out);
    anything else is str(value). The grid validates jobs through this too.
    """
    args = []
    for key, value in job.items():
        if key in NOT_FLAGS or value is None or value is False or value == []:
            continue
        args.append(f"--{key}")
        if value is not True:
            values = value if isinstance(value, list) else [value]
            args.extend(str(v) for v in values)
    return args


# ---------------------------------------------------------------- what derives from the roles

def settings_with_defaults(flags):
    """A job's flags with every registry default filled in (preset-dependent ones resolved)."""
    settings = {flag.name: flag.default for flag in FLAGS}
    settings.update({name: value for name, value in PROJECT_DEFAULTS.items()})
    settings.update(preset_values(flags.get("preset"), flags.get("model", "test")))
    settings.update(flags)
    return settings


def matters(name, mode, settings):
    """Whether flag `name` can change the work of a `mode` job with these settings
    (settings: every flag's value, as settings_with_defaults gives)."""
    flag = BY_NAME[name]
    return mode in flag.modes and (flag.needs is None or flag.needs(settings))


def base_key_values(settings):
    """The keyed base-phase flags' values (None for one that does not matter: augmentation
    parameters without augmentation), and those of the key_unless_default flags not at their default."""
    values = {flag.name: settings[flag.name] if flag.needs is None or flag.needs(settings) else None
              for flag in FLAGS if flag.role == "base" and flag.keyed}
    values.update({flag.name: settings[flag.name] for flag in FLAGS
                   if flag.key_unless_default and settings.get(flag.name, default_of(flag)) != default_of(flag)})
    return values


def not_in_base_job():
    """The flags a base_only job leaves out: the target phase's and where results go."""
    return tuple(flag.name for flag in FLAGS if not flag.kept_by_base_job())


def not_settings():
    """Flags that are not part of an experiment's configuration (output and runtime ones, and fold,
    which says which fold of the configuration a run is)."""
    return {flag.name for flag in FLAGS if flag.role in ("output", "runtime")} | {"fold"}


def base_phase_only():
    """Flags that mean nothing without a base phase (a target_only run leaves them blank)."""
    return {flag.name for flag in FLAGS if not set(flag.modes) & set(modes.names(base_phase=False))}
