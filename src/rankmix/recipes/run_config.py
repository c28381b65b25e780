"""RunConfig: everything one `rankmix train` run needs, read from YAML plus `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import AdapterConfig, check_keys, config_from_dict
from ..files import read_utf8, read_yaml, write_yaml
from ..growth import GROW_MODES
from ..methods import method_named

SAMPLINGS = ("size_softmax", "temperature", "proportional", "uniform")
BATCH_MODES = ("single", "mixed")
PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-4
    head_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the encoder task heads (default: lr)"}
    )
    router_lr: float | None = field(
        default=None, metadata={"help": "learning rate of the routers: gates, task embeddings (default: lr)"}
    )
    weight_decay: float = 0.01
    max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "clip the gradient norm before each optimizer step; null: no clipping"}
    )
    warmup_steps: int = 100
    grad_accum: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute each block's activations in the backward pass (less memory, slower)"},
    )
    seed: int = 42
    data_seed: int | None = field(
        default=None,
        metadata={
            "help": "seed of the per-task training/eval subsets (default: seed); fix it to score "
            "every seed on the same examples"
        },
    )
    eval_every: int = 200
    checkpoint_every: int | None = field(
        default=100,
        metadata={"help": "also checkpoint every N steps between evaluations (null: at evaluations only)"},
    )
    log_every: int = 10
    sampling: str = field(
        default="size_softmax",
        metadata={"help": "size_softmax (MoRE: softmax of |D_t|/sum|D|), temperature, proportional, uniform"},
    )
    temperature: float = 2.0
    batch_mode: str = field(default="single", metadata={"help": "single: one task per batch; mixed"})
    max_length: int = 128
    num_workers: int = field(
        default=0, metadata={"help": "DataLoader worker processes that pad batches (0: the main process)"}
    )
    max_train_examples: int | None = field(
        default=None, metadata={"help": "per-task cap, drawn with the seed"}
    )
    max_eval_examples: int | None = None

    @property
    def sampling_seed(self) -> int:
        """The seed of the per-task subsets: data_seed, else seed."""
        return self.seed if self.data_seed is None else self.data_seed

    def validate(self) -> None:
        if not isinstance(self.gradient_checkpointing, bool):
            raise ValueError(
                f"train.gradient_checkpointing must be true or false, got {self.gradient_checkpointing!r}"
            )
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "log_every", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"train.{name} must be a positive integer, got {value!r}")
        for name in ("max_train_examples", "max_eval_examples", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"train.{name} must be a positive integer or null, got {value!r}")
        if (
            isinstance(self.num_workers, bool)
            or not isinstance(self.num_workers, int)
            or self.num_workers < 0
        ):
            raise ValueError(f"train.num_workers must be an integer >= 0, got {self.num_workers!r}")
        if self.data_seed is not None and (
            isinstance(self.data_seed, bool) or not isinstance(self.data_seed, int)
        ):
            raise ValueError(f"train.data_seed must be an integer or null, got {self.data_seed!r}")
        for name in ("head_lr", "router_lr", "max_grad_norm"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            ):
                raise ValueError(f"train.{name} must be a number > 0 or null, got {value!r}")
        for name, low in (("lr", None), ("weight_decay", 0), ("warmup_steps", 0), ("temperature", None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"train.{name} must be a number, got {value!r}")
            if (low is None and not value > 0) or (low is not None and not value >= low):
                raise ValueError(f"train.{name} must be {'> 0' if low is None else f'>= {low}'}, got {value}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"train.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.batch_mode not in BATCH_MODES:
            raise ValueError(f"train.batch_mode must be one of {BATCH_MODES}, got {self.batch_mode!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(
                f"train.mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}"
            )


QUANTIZATIONS = ("none", "nf4", "int8")
PATH_KEYS = (
    "output_dir",
    "model",
    "data_dir",
    "init_from",
)  # a local path each, or (model) a name or a hub id


def _absolute(value: str, base: Path) -> str:
    """`value` made absolute where it names something that exists under `base`; else as it is."""
    path = base / value
    return str(path.resolve()) if not Path(value).is_absolute() and path.exists() else value


@dataclass
class RunConfig:
    model: str = field(metadata={"help": "a model folder or hub id, or 'minilm' / 'smollm2' (packaged)"})
    tasks: list[str]
    method: dict[str, Any] = field(metadata={"help": "adapter config: {method: more, max_rank: 8, ...}"})
    output_dir: str = "runs/run"
    model_quantization: str = field(
        default="none",
        metadata={"help": "load the base quantized with bitsandbytes: nf4 (4-bit) or int8; none (default)"},
    )
    data_dir: str | None = field(default=None, metadata={"help": "local data folder; none: the HF hub"})
    custom_tasks: list[str] = field(
        default_factory=list, metadata={"help": "YAML files of user tasks, relative to the recipe"}
    )
    strict: bool = field(
        default=False,
        metadata={
            "help": "malformed data rows raise instead of being skipped, and an adapter loaded onto a "
            "base with other weights (its fingerprint) raises instead of warning"
        },
    )
    eval_mode: str = field(default="score", metadata={"help": "score candidates (default) or generate"})
    task_kinds: dict[str, str] | None = field(
        default=None,
        metadata={
            "help": "the kind each task was trained as, {task: kind}: training writes it into the run's "
            "run.yaml; a run.yaml without it predates task kinds (its commonsense tasks are the "
            "label-word ones, <task>_labels)"
        },
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "a trained run folder to start from, grown to this recipe's tasks (--init-from)"},
    )
    grow: str = field(
        default="joint",
        metadata={
            "help": "with init_from: joint (old and new tasks train on together) or frozen (the old tasks' "
            "outputs stay bit for bit; the new ones train parameters of their own)"
        },
    )
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train is None:
            self.train = TrainConfig()
        if isinstance(self.train, dict):
            self.train = _build(TrainConfig, self.train, "train.")
        if not isinstance(self.train, TrainConfig):
            raise ValueError(
                f"train must be a mapping of training options (e.g. train.lr=1e-3), got {self.train!r}"
            )
        if isinstance(self.tasks, str) or not self.tasks:
            raise ValueError(f"tasks must be a non-empty list of task names, got {self.tasks!r}")
        if self.model_quantization not in QUANTIZATIONS:
            raise ValueError(
                f"model_quantization must be one of {QUANTIZATIONS}, got {self.model_quantization!r}"
            )
        if self.grow not in GROW_MODES:
            raise ValueError(f"grow must be one of {GROW_MODES}, got {self.grow!r}")
        if self.grow == "frozen" and self.init_from is None:
            raise ValueError("grow: frozen adds tasks to a trained run: name it with --init-from RUN")
        if self.eval_mode not in ("score", "generate"):
            raise ValueError(f"eval_mode must be 'score' or 'generate', got {self.eval_mode!r}")
        if not isinstance(self.method, dict) or "method" not in self.method:
            raise ValueError("method must be a mapping with a 'method' key, e.g. {method: more, max_rank: 8}")
        self.train.validate()
        self.adapter_config()  # validate now, before any long work

    def adapter_config(self) -> AdapterConfig:
        """The adapter config; task-routed methods get the run's task list unless it names its own."""
        data = dict(self.method)
        if method_named(data.get("method")).task_routed:
            data.setdefault("tasks", list(self.tasks))
            if isinstance(data["tasks"], (list, tuple)) and list(data["tasks"]) != list(self.tasks):
                raise ValueError(
                    f"method.tasks {data['tasks']} differs from tasks {self.tasks}; drop method.tasks"
                )
        return config_from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve_paths(self, base: Path) -> None:
        """Make local paths absolute: a relative one names a file or folder under `base` (the working
        directory when training starts; a run.yaml's own folder when a run folder is opened), where one
        exists there. Packaged model names and hub ids stay as they are."""

        for key in PATH_KEYS:
            if getattr(self, key) is not None:
                setattr(self, key, _absolute(getattr(self, key), base))
        self.custom_tasks = [_absolute(p, base) for p in self.custom_tasks]

    def save(self, path: str | Path) -> None:
        """Write the config. The run folder (output_dir) and paths inside it are written relative to the
        file's folder, and others stay absolute, so that a run folder works when moved or copied."""
        here, root = Path(path).parent.resolve(), Path(self.output_dir).resolve()

        def portable(value: str) -> str:
            resolved = Path(value).resolve()
            return os.path.relpath(resolved, here) if resolved.is_relative_to(root) else value

        data = self.to_dict()
        data["output_dir"] = portable(self.output_dir)
        for key in ("model", "data_dir", "init_from"):
            if data[key] is not None and Path(data[key]).is_absolute():
                data[key] = portable(data[key])
        data["custom_tasks"] = [portable(p) if Path(p).is_absolute() else p for p in self.custom_tasks]
        write_yaml(path, data)


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    check_keys(cls, data, "unknown option ", prefix)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in data
    ]
    if missing:
        raise ValueError(f"missing required option(s) {[prefix + m for m in missing]}")
    return cls(**data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` / `train.lr=1e-3` overrides (values parsed as YAML) to a nested mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value (e.g. train.lr=1e-3), got {item!r}")
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a section")
        node[leaf] = read_yaml(raw, f"--set {item!r}")
    return data


def load_run_config(
    path: str | Path, overrides: list[str] | None = None, paths_from_file: bool = False
) -> RunConfig:
    """Read a recipe YAML, apply overrides, validate every key (unknown keys get a 'did you mean').
    `paths_from_file` (a run folder's run.yaml): the file's relative paths are relative to its folder;
    an override's, like a recipe's, to the working directory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found; the ready recipes are in configs/")
    data = read_yaml(read_utf8(path, "recipe"), f"recipe {path}")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping (model:, tasks:, method:, train: ...)")
    if paths_from_file:
        for key in PATH_KEYS:
            if isinstance(data.get(key), str):
                data[key] = _absolute(data[key], path.parent)
    data = apply_overrides(data, overrides or [])
    if isinstance(data.get("custom_tasks"), list):  # relative to the recipe, kept absolute in run.yaml
        data["custom_tasks"] = [
            str((path.parent / p).resolve()) if isinstance(p, str) else p for p in data["custom_tasks"]
        ]  # anything else than a path is refused by the config's own check
    return _build(RunConfig, data)
