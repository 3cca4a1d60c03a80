"""The words every layer of scaletui shares, each defined once: statuses, loss rules, choices, defaults.

Why one module: a status spelled "early_stopped" in the runner, 'early_stopped' in an SQL view and
"early" in the app drift apart the day one of them changes. Everything here is a `str` enum (so a value
compares equal to its text, is stored in SQLite and JSON as that text, and hashes into a run's key
exactly as the plain string did) or a constant; the sweep file's checks, the engine's builders, the
store's SQL (`sql_list`), the services and both front ends import it. A test scans the package for
status and choice literals written anywhere else.

Standard library only: this is the bottom of the dependency graph.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Choice(str, enum.Enum):
    """A closed set of spellings. `choices()` lists the values in definition order (for checks and help)."""

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)

    def __str__(self) -> str:  # f-strings and click print the value, not `Arch.MLP`
        return str(self.value)

    # A member and its text must be one dict key and one set element ("adam" finds Optimizer.ADAM):
    # say so explicitly rather than rely on which base class's __hash__ the enum machinery keeps.
    __hash__ = str.__hash__


# --------------------------------------------------------------------------- run states


class RunStatus(Choice):
    """Every state a run can be in; nothing stays RUNNING once its process is gone."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    EARLY_STOPPED = "early_stopped"
    DIVERGED = "diverged"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the process was stopped or died; resumable
    STALE = "stale"  # no heartbeat for too long, owner unknown

    @property
    def finished(self) -> bool:
        """A finished run is skipped when the sweep is run again."""
        return self in FINISHED

    @property
    def ok(self) -> bool:
        """Success for the CLI's exit code; these runs' losses are fitted and ranked."""
        return self in OK

    @property
    def stopped(self) -> bool:
        """Ended without finishing: resumable, or needing attention."""
        return self in STOPPED


#: Skipped when a sweep is run again.
FINISHED: frozenset[RunStatus] = frozenset({RunStatus.DONE, RunStatus.EARLY_STOPPED, RunStatus.DIVERGED})
#: Finished well: their loss counts in tables, grids and fits (diverged runs are counted, not averaged).
OK: frozenset[RunStatus] = frozenset({RunStatus.DONE, RunStatus.EARLY_STOPPED})
#: Ended without finishing.
STOPPED: frozenset[RunStatus] = frozenset({RunStatus.FAILED, RunStatus.INTERRUPTED, RunStatus.STALE})


def sql_list(values: Iterable[str]) -> str:
    """`'done', 'early_stopped'` for an SQL `IN (...)`: views are generated from the sets above.
    Sorted, so the generated SQL text is the same in every process."""
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in sorted(str(v) for v in values))


# --------------------------------------------------------------------------- the loss of a run


EMA_BETA = 0.9  # smoothing of the test-loss evaluations for LossRule.SMOOTHED


class LossRule(Choice):
    """Which number is "the loss of a run": stated once, labelled everywhere."""

    FINAL = "final"  # test loss at the last evaluation
    BEST = "best"  # lowest test loss over all evaluations
    SMOOTHED = "smoothed"  # debiased EMA of the test-loss evaluations, at the end

    @property
    def label(self) -> str:
        return self.label_for(DEFAULT_LOSS_METRIC)

    def label_for(self, metric: str) -> str:
        """This rule applied to an experiment's loss metric: "final test loss", or "final cost" for a
        sweep of one's own code whose loss is `cost`."""
        return f"{self.value} {metric.replace('_', ' ')}"

    @property
    def column(self) -> str:
        """The `runs` column that holds this rule's loss."""
        return {LossRule.FINAL: "final_test_loss", LossRule.BEST: "best_test_loss",
                LossRule.SMOOTHED: "smoothed_test_loss"}[self]


class DebiasedEma:
    """Exponential moving average with Adam-style bias correction: the value after n updates is
    sum_i beta^(n-i) (1-beta) v_i / (1 - beta^n), so a short series is not pulled towards 0."""

    def __init__(self, beta: float = EMA_BETA, *, raw: float = 0.0, count: int = 0) -> None:
        self.beta = beta
        self.raw = raw  # not yet debiased (what a checkpoint keeps, with `count`)
        self.count = count

    def update(self, value: float) -> float:
        self.raw = self.beta * self.raw + (1 - self.beta) * value
        self.count += 1
        return self.value

    @property
    def value(self) -> float:
        return self.raw / (1 - self.beta**self.count) if self.count else float("nan")


# --------------------------------------------------------------------------- sweep choices


class Arch(Choice):
    MLP = "mlp"  # depth x (Linear -> norm -> ReLU -> dropout), linear head
    RESMLP = "resmlp"  # linear stem, depth residual blocks, linear head
    RESNET = "resnet"  # the CIFAR ResNet family: three stages of `depth` basic blocks


#: Architectures whose parameter count is computed from the config alone (no torch).
DENSE_ARCHS: frozenset[Arch] = frozenset({Arch.MLP, Arch.RESMLP})


class Norm(Choice):
    NONE = "none"
    BATCH = "batch"
    LAYER = "layer"  # LayerNorm (GroupNorm with one group in ResNets)


class Init(Choice):
    DEFAULT = "default"  # PyTorch's
    HE = "he"
    XAVIER = "xavier"
    ORTHOGONAL = "orthogonal"


class Optimizer(Choice):
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"
    ADAMW = "adamw"


#: Tensors of optimizer state per parameter tensor (memory estimates).
OPTIMIZER_STATE_COPIES: dict[Optimizer, int] = {Optimizer.SGD: 0, Optimizer.MOMENTUM: 1, Optimizer.ADAM: 2,
                                                Optimizer.ADAMW: 2}


class Schedule(Choice):
    CONSTANT = "constant"
    COSINE = "cosine"  # to zero at the last step
    LINEAR_WARMUP_COSINE = "linear_warmup_cosine"


class LrScaling(Choice):
    NONE = "none"
    SQRT_PARAMS = "sqrt_params"  # lr * sqrt(lr_ref_params / params)


class Normalize(Choice):
    STANDARD = "standard"  # per-feature/channel mean and std of the training subset
    NONE = "none"


class EarlyStoppingMetric(Choice):
    TEST_LOSS = "test_loss"  # lower is better
    TEST_ACC = "test_acc"  # higher is better

    @property
    def lower_is_better(self) -> bool:
        return self is EarlyStoppingMetric.TEST_LOSS


class Device(Choice):
    AUTO = "auto"  # cuda when available, else cpu
    CPU = "cpu"
    CUDA = "cuda"  # also "cuda:N" (checked by config.device_name)


class BatchRuns(Choice):
    """`experiment.batch_runs`: train same-shape runs of a sweep together as one batched model."""

    AUTO = "auto"  # bundles of runs that differ only in seed, lr or weight decay (mlp, resmlp); `false` turns it off


class LrRule(Choice):
    """How the configurator proposes a learning rate for a size not yet run."""

    AUTO = "auto"  # the fitted power law when enough sizes swept the rate, else the sqrt-params rule
    POWER_LAW = "power_law"  # best_lr = c * params^-k fitted over sizes that swept the rate
    SQRT_PARAMS = "sqrt_params"  # lr * sqrt(params_ref / params)
    WIDTH = "width"  # maximal-update-style lr * width_ref / width


class DropoutRule(Choice):
    """How the configurator proposes a dropout for a depth not yet run."""

    AUTO = "auto"  # the backtest's winner with enough swept sizes, else depth_fit (3+ sizes) or keep_total
    DEPTH_FIT = "depth_fit"  # per-layer drop rate -ln(1-p) = c * depth^-k fitted over the swept depths
    FIXED = "fixed"  # the nearest swept depth's best p, unchanged
    KEEP_TOTAL = "keep_total"  # keep the nearest depth's (1-p)^depth: p = 1 - (1-p_ref)^(depth_ref/depth)


# --------------------------------------------------------------------------- fits


class FitX(Choice):
    """What a law is fitted against."""

    PARAMS = "params"
    WIDTH = "width"
    DEPTH = "depth"
    FLOPS = "flops"  # forward FLOPs per example x steps trained x batch size
    EXAMPLES = "examples"  # data.train_size
    STEPS = "steps"  # every evaluation of the test-loss series


# --------------------------------------------------------------------------- alerts and events


class Severity(Choice):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for the most severe: alerts sort critical first."""
        return {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}[self]


class AlertKind(Choice):
    DIVERGENCE = "divergence"
    PLATEAU = "plateau"
    VANISHING_GRADIENTS = "vanishing_gradients"
    EXPLODING_GRADIENTS = "exploding_gradients"  # (a collapsing layer is reported as vanishing)
    OVERFITTING = "overfitting"
    NON_MONOTONIC = "non_monotonic"
    SEED_SENSITIVITY = "seed_sensitivity"


class EventKind(Choice):
    """What the `events` table records besides a run's status changes (which use the status's value)."""

    MODEL = "model"  # the model was built: its size
    RESUMED = "resumed"  # restarted from a checkpoint
    STARTED = "started"  # a worker took the run
    CHECKPOINT = "checkpoint"  # a checkpoint was set aside as unreadable, or not used
    MONITOR_ERROR = "monitor_error"  # the live alert monitor failed a pass (the sweep goes on)


class RunEventKind(Choice):
    """What the runner tells its front end about a run (`runner.RunEvent.kind`)."""

    STARTED = "started"
    PROGRESS = "progress"
    FINISHED = "finished"
    STORAGE_FAILED = "storage_failed"  # the database refuses writes: the sweep stops


# --------------------------------------------------------------------------- runs of your own code


class RunSource(Choice):
    """Where a run's code came from (`runs.source`): what its `config_json` / `user_config_json` hold."""

    SWEEP = "sweep"  # a RunSpec of experiments.toml, trained by the built-in loop (config_json)
    API = "api"  # a researcher's own loop through `scaletui.init` (user_config_json; config_json NULL)
    ENTRYPOINT = "entrypoint"  # a run of experiments.toml trained by the researcher's `train.entrypoint` (as api)


#: Metric keys (the `metrics` table's `key`) that the training loops record: the train loss of every
#: step, and at each evaluation the test loss, the test accuracy and the accuracy on a train subset.
TRAIN_LOSS_METRIC = "train_loss"
TEST_LOSS_METRIC = "test_loss"
TEST_ACC_METRIC = "test_acc"
TRAIN_ACC_METRIC = "train_acc"
#: What the run-level detectors read (services.monitor for the built-in loop, services.own_records for
#: one's own loop).
DIAGNOSED_METRICS = (TRAIN_LOSS_METRIC, TEST_LOSS_METRIC, TEST_ACC_METRIC, TRAIN_ACC_METRIC)

#: The metric that is "the loss" of an experiment unless it says otherwise (`experiments.loss_metric`):
#: what the built-in loop evaluates, and what `scaletui.init(loss=...)` defaults to.
DEFAULT_LOSS_METRIC = TEST_LOSS_METRIC


# --------------------------------------------------------------------------- the predictions ledger


class PredictionStatus(Choice):
    """Where a recorded next-size prediction stands (`predictions.status`)."""

    OPEN = "open"  # no finished run of that size and training plan yet
    SCORED = "scored"  # every run of that size and plan finished: truth, error and band coverage stored
    UNSCORABLE = "unscorable"  # runs of that size finished under another training plan (`note` says what changed)


class PredictionKind(Choice):
    """What a prediction is about (`predictions.kind`)."""

    SIZE = "size"  # the loss of a size not trained yet, from the law over the sizes that were
    CURVE = "curve"  # a running run's final loss, from its loss so far and the sweep's finished runs


class PredictionSource(Choice):
    """Who recorded a prediction (`predictions.source`)."""

    PREDICT = "predict"  # `scaletui predict --width W --depth D`
    APP = "app"  # the fit pane's key
    SUGGEST = "suggest"  # `scaletui suggest`, with the hyperparameters it proposes
    MONITOR = "monitor"  # the sweep's monitor, at each evaluation of a running run (kind curve)


#: The form column of a curve prediction: the ratio law of analysis.curve_forecast.
CURVE_FORM = "ratio"


#: A prediction further than this factor beyond the largest (or below the smallest) size the law was
#: fitted on is refused: five sizes say little about a model 100 times bigger.
MAX_EXTRAPOLATION = 100.0


# --------------------------------------------------------------------------- export


class ExportWhat(Choice):
    """`scaletui export --what`: which records go to the file."""

    RUNS = "runs"  # one row per run: every `runs` column, its experiment, loss rule and loss
    METRICS = "metrics"  # one row per (run, step, key)
    LAYER_STATS = "layer_stats"  # one row per (run, step, layer)
    FITS = "fits"  # one row per stored fit
    PREDICTIONS = "predictions"  # one row per stored prediction (once the database has the table)


class ExportFormat(Choice):
    CSV = "csv"
    PARQUET = "parquet"


# --------------------------------------------------------------------------- defaults and sentinels

DEFAULT_SWEEP_FILE = "experiments.toml"
DEFAULT_DB = "runs/scaletui.db"
DEFAULT_DATA_DIR = "runs/data"
DEFAULT_CHECKPOINT_DIR = "runs/checkpoints"
#: A step cursor before any step ("read everything"); SQLite integers are 64-bit.
BEFORE_ANY_STEP = -(2**62)
#: A step bound after any step ("no upper bound").
AFTER_ANY_STEP = 2**62


# --------------------------------------------------------------------------- the gradient noise scale

#: Metric keys of the gradient noise scale (McCandlish et al. 2018), recorded by the training loops on
#: some logging steps: each measurement's unbiased estimates of |G|^2 and tr(Sigma) (from the squared
#: gradient norms of the step's batch and of its halves), and the running B_simple = tr(Sigma) / |G|^2,
#: the ratio of their debiased EMAs (averaged first: a ratio of noisy estimates is biased).
NOISE_SCALE_METRIC = "grad_noise_scale"
NOISE_G2_METRIC = "grad_noise_g2"
NOISE_TRACE_METRIC = "grad_noise_trace"


# --------------------------------------------------------------------------- executors


class ExecutorKind(Choice):
    """`experiment.executor` / `scaletui run --executor`: where a sweep's runs train."""

    LOCAL = "local"  # worker processes on this machine (services/runner.LocalProcessExecutor), the default
    RAY = "ray"  # tasks on a Ray cluster (services/ray_executor.py); needs the `scaletui[ray]` extra


#: `experiment.ray_address` that joins the cluster this machine already belongs to (`ray.init(address="auto")`);
#: unset starts a Ray instance of this machine alone, any other value is the head's `host:port`.
RAY_ADDRESS_AUTO = "auto"
#: `experiment.max_retries`: how often the Ray executor retries a run whose worker or node was lost (the
#: run resumes from its last checkpoint); a run still unfinished after that stays `interrupted`.
DEFAULT_MAX_RETRIES = 1
