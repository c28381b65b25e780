"""Property-based tests of what a user of `rankmix train | eval | predict` sees, on generated argument
vectors, recipe files, custom task files and data files. test_fuzz.py checks the recipe validators on
their own; these run the whole command in-process (tests/test_cli.py's way), so they also reach the
paths that fail only once a model is loaded, data is read or a file is written. For every case:

1. the command ends with exit code 0 or 2 (a training run that diverges: its one-line stop, code 1),
   never with an uncaught exception or a printed traceback; on 2, stderr ends with one line
   `rankmix CMD: error: ...` (after argparse's `usage:` for a usage error);
2. nothing is written outside the output locations the case names (output_dir, --out): each case runs
   in a fresh working folder holding the recipe, the model and data (linked), a trained run and a
   custom task, which is compared with the template it came from (names, sizes, mtimes) before and
   after; and a command that fails changes no file at all (README, Failures: bad input).

Each case must cost little: a 1-layer, 16-wide random Llama saved to a folder, one training step on a
few examples of the generated GLUE data (tests/glue_fixture.py), so that a case which passes
validation trains in a tenth of a second; eval and predict fuzz copies of one run trained once for the
module. The hub is switched off (offline mode): a case that falls back to it fails at once instead of
waiting on the network. Hypothesis runs derandomized, so CI sees the same cases on every run."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from helpers import build_base, word_tokenizer
from rankmix import config as adapter_configs
from rankmix.files import read_yaml
from rankmix.recipes.run_config import RunConfig, TrainConfig
from rankmix.tasks import custom, get_task, registry
from test_cli import cli  # in-process; only SystemExit is caught, so an uncaught exception fails the case

# the cases' expected warnings (malformed rows skipped, a metric over one class) are not what is tested
pytestmark = pytest.mark.filterwarnings("ignore:skipped:UserWarning", "ignore:A single label:UserWarning")


def fuzz(max_examples: int) -> settings:
    """Reproducible (derandomized, no example database) and without per-example deadlines: a case that
    trains takes a tenth of a second, one that fails validation a millisecond."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- the recipe, the model, the run ---------------------------------------------------------------------
TASKS = ["cola", "stsb"]  # one single-text classification task, one pair regression task
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<s>", "</s>"]
GOOD = {
    "model": "model",
    "tasks": TASKS,
    "data_dir": "data",
    "output_dir": "out/run",
    "method": {"method": "more", "max_rank": 2, "target_modules": "all-linear"},
    "train": {
        "steps": 1,
        "batch_size": 2,
        "lr": 1.0e-2,
        "warmup_steps": 0,
        "eval_every": 1000,
        "log_every": 1000,
        "checkpoint_every": None,
        "max_train_examples": 4,
        "max_eval_examples": 2,
        "max_length": 16,
        "seed": 0,
    },
}
DEFAULT_OUTPUT_DIR = RunConfig.__dataclass_fields__["output_dir"].default
CUSTOM = {  # a valid custom task file of the template, task/fz.yaml
    "name": "fz",
    "data": {"train": "train.jsonl", "dev": "dev.jsonl"},
    "text_fields": ["text"],
    "label_field": "label",
    "labels": ["no", "yes"],
}
CUSTOM_ROWS = "".join(json.dumps({"text": f"the cat {w}", "label": w}) + "\n" for w in ("no", "yes") * 2)
WORK = "@/"  # stands for the case's working folder in generated values: absolute paths that stay inside it


def _corpus(data_dir: Path) -> list[str]:
    """The words of the tasks' training files, prompts and answers: the tokenizer's vocabulary."""
    lines = ["0 1 2 3 4 5 6 7 8 9 . yes no the cat"]
    for rel in ("glue/RTE/train.tsv", "glue/CoLA/train.tsv", "glue/STS-B/train.tsv"):
        lines += (data_dir / rel).read_text(encoding="utf-8").splitlines()[:100]
    for name in (*TASKS, "rte"):
        task = get_task(name)
        lines += [task.template, " ".join(task.label_words)]
    return lines


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No case may wait on the network: a recipe without data_dir, or a model path that names no
    folder, reaches the hub, which then fails at once."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        try:  # datasets copies the setting when imported
            import datasets.config
        except ImportError:  # then the hub fallback fails at once anyway (rankmix[hub] is not installed)
            pass
        else:
            mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def template(tmp_path_factory, glue_data) -> Path:
    """The folder every case starts from: recipe.yaml (GOOD), model/, data/, a trained run/, a custom
    task in task/, and things a path may wrongly name: a file, an empty folder, a folder of other files."""
    root = tmp_path_factory.mktemp("fuzz-cli")
    shutil.copytree(glue_data, root / "data")
    tokenizer = word_tokenizer(_corpus(root / "data"), specials=SPECIALS)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    model = build_base("llama", layers=1, hidden=16, vocab=len(tokenizer), **ids)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "task").mkdir()
    (root / "task" / "fz.yaml").write_text(yaml.safe_dump(CUSTOM))
    for split in ("train", "dev"):
        (root / "task" / f"{split}.jsonl").write_text(CUSTOM_ROWS)
    (root / "notes.txt").write_text("a file, not a folder\n")
    (root / "empty").mkdir()
    (root / "stuff").mkdir()
    (root / "stuff" / "keep.txt").write_text("someone else's file\n")
    (root / "recipe.yaml").write_text(yaml.safe_dump(GOOD, sort_keys=False))
    with contextlib.chdir(root), task_registry():
        code, _, err = cli("train", "recipe.yaml", "--set", "output_dir=run", "--no-progress")
    assert code == 0, err
    assert (root / "run" / "adapter").is_dir()
    return root


# -- the working folder of one case, and what a case may change ----------------------------------------
_CASES = itertools.count()


@contextlib.contextmanager
def task_registry() -> Iterator[None]:
    """Custom tasks a case registers are forgotten after it, so that every case starts from the same
    registry (a task name taken by an earlier case would turn a good task file into an error)."""
    tasks, loaded = dict(registry._TASKS), dict(custom._LOADED)
    try:
        yield
    finally:
        registry._TASKS.clear()
        registry._TASKS.update(tasks)
        custom._LOADED.clear()
        custom._LOADED.update(loaded)


SHARED = ("model", "data")  # what every case reads and no generated output path goes into


@contextlib.contextmanager
def workspace(base: Path, template: Path) -> Iterator[Path]:
    """A fresh working folder, removed after the case: links to the template's model/ and data/ (linked
    rather than copied, which keeps a case's folder small and quick to remove), a copy of the rest (the
    recipe, the run, the custom task, ...), which a case may change."""
    work = base / f"case{next(_CASES)}"
    shutil.copytree(template, work, ignore=lambda folder, names: SHARED if Path(folder) == template else ())
    for name in SHARED:
        (work / name).symlink_to(template / name, target_is_directory=True)
    try:
        with contextlib.chdir(work), task_registry():
            yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every folder, file and link under `roots`: folders by name, files by size and mtime."""
    entries: dict[str, tuple] = {}
    for root in roots:
        entries[str(root)] = ("dir",)
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(folder, name)
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    entries[path] = ("link", os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    entries[path] = ("dir",)
                else:
                    entries[path] = ("file", info.st_size, info.st_mtime_ns)
    return entries


def place(value: str, work: Path) -> str:
    return value.replace(WORK, f"{work}{os.sep}")


def location(value: object, work: Path) -> str | None:
    """The absolute path an output option names (relative ones from the working folder), if a string."""
    if not isinstance(value, str):
        return None
    return os.path.normpath(os.path.join(work, place(value, work)))


def replaced(value: str, work: Path, inputs: list[str], force: bool) -> bool:
    """Whether a file --out at `value` would replace what it must not (README: what rankmix guarantees
    about your files): an input of the command (even with --force), a file of the trained run, or any
    existing file without --force."""
    path = Path(location(value, work))
    if any(path == Path(location(i, work)) for i in inputs) or path.is_relative_to(work / "run"):
        return True
    return path.is_file() and not force


def blocked(value: str, work: Path, folder: bool = False) -> bool:
    """Whether no file (`folder`: no folder) can be made at the path `value` names, as the working folder
    is now: it is a folder (a file), or a file lies on the way to it."""
    path = Path(location(value, work))
    return (path.is_file() if folder else path.is_dir()) or any(p.is_file() for p in path.parents)


def changes(before: dict, after: dict) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def outside(changed: list[str], after: dict, before: dict, allowed: list[str]) -> list[str]:
    """The changed paths that are neither an allowed output (or inside one) nor a folder created on the
    way to one."""

    def ok(path: str) -> bool:
        if any(path == a or path.startswith(a + os.sep) for a in allowed):
            return True
        made = path not in before and after.get(path) == ("dir",)
        return made and any(a.startswith(path + os.sep) for a in allowed)

    return [p for p in changed if not ok(p)]


def check_outcome(
    command: str,
    code: int,
    err: str,
    before: dict,
    after: dict,
    allowed: list[str],
    diverged_ok: bool = False,
) -> None:
    """Properties 1 and 2 of the module docstring."""
    note(f"exit {code}; stderr ends: {err[-600:]!r}")
    assert "Traceback" not in err, f"a traceback on stderr:\n{err}"
    lines = err.rstrip("\n").splitlines()
    if code == 1 and diverged_ok:  # README, Failures: a NaN loss stops the run with one line and code 1
        assert lines and lines[-1].startswith(f"rankmix {command}: training diverged"), err
    else:
        assert code in (0, 2), f"exit code {code}:\n{err}"
    if code == 2:
        assert lines, "exit code 2 without a message"
        last = lines[-1]
        # argparse reports unrecognized arguments from the top-level parser: `rankmix: error: ...`
        prefixes = [f"rankmix {command}: error: "] + (
            ["rankmix: error: "] if err.startswith("usage:") else []
        )
        message = next((last[len(p) :] for p in prefixes if last.startswith(p)), "")
        assert message.strip(), f"not a one-line error:\n{err}"
    changed = changes(before, after)
    stray = outside(changed, after, before, allowed)
    assert not stray, f"written outside {allowed}: {stray}"
    if code == 2:  # README, Failures: bad input writes or deletes nothing (the run's lock file aside:
        # training takes the lock, recording who holds it, before it reads the checkpoint it may refuse)
        touched = [
            p for p in changed if after.get(p) != ("dir",) and not p.endswith(f"{os.sep}.rankmix-lock")
        ]
        assert not touched, f"a failed command changed {touched}"


def run_case(command: str, argv: list[str], work: Path, template: Path, allowed: list[str], **kw) -> tuple:
    """Run `rankmix COMMAND ARGV` in `work` and check properties 1 and 2; returns (code, stdout, stderr)."""
    argv = [place(a, work) for a in argv]
    note(f"rankmix {command} {argv}")
    before = snapshot(work, template)
    code, out, err = cli(command, *argv)
    check_outcome(command, code, err, before, snapshot(work, template), allowed, **kw)
    return code, out, err


# -- generated values -------------------------------------------------------------------------------------
PATHS = [
    "out/new",
    "out/new.json",
    "new.jsonl",
    "empty",
    "stuff",
    "stuff/keep.txt",
    "notes.txt",
    "notes.txt/sub",
    "notes.txt/sub/x.json",
    "run",
    "run/adapter",
    "run/results.json",
    ".",
    "",
    "a b/ü.json",
    ".hidden/x",
    "-dash",
    f"{WORK}out/abs.json",
    f"{WORK}empty",
    f"{WORK}notes.txt/sub",
    "rows.jsonl",
    "recipe.yaml",
    "task/fz.yaml",
]
segments = st.sampled_from(["a", "b c", "ü", "x.json", ".h", "new", "notes.txt", "empty", "run"])
paths = st.sampled_from(PATHS) | st.lists(segments, min_size=1, max_size=3).map("/".join)

# --set values are YAML text; these are the ones a validator most easily gets wrong. None of them (nor
# any generated integer) asks for much work where it is valid: no large step counts, ranks or workers.
RAW = [
    "null", "~", "true", "no", "0", "-1", "1", "2", "1.5", "1e-3", "1e309", ".inf", "-.inf", ".nan",
    "[]", "{}", "''", '""', "'quoted'", "[1, 2]", "{a: 1}", "[cola]", "{method: lora}", "2468", "all-linear",
    "[q_proj]", "[", "{", "]", "a: b: c", "- x", "&a [*a]", "!!python/object/apply:os.system [echo]",
    "!!binary aGVsbG8=", "2024-01-01", "0x10", "? a", "%YAML 1.2", "---", "@x", "`x`", "'[",
    "key: [1, 2", "\t", "a\nb", "!!set {a}", "*alias",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def as_yaml(value: object) -> str:
    """`value` as one flow-style YAML value (what a user would type after KEY=)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()


text_no_nul = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=10)
raw_values = st.sampled_from(RAW) | values.map(as_yaml) | text_no_nul
bounded = st.sampled_from(RAW) | st.integers(-2, 4).map(str) | st.sampled_from(["1.0", "two", "3.5"])

CONFIGS = [c for c in vars(adapter_configs).values() if isinstance(c, type) and getattr(c, "method", "")]
TOP_KEYS = [f.name for f in dataclasses.fields(RunConfig)]
TRAIN_KEYS = [f"train.{f.name}" for f in dataclasses.fields(TrainConfig)]
METHOD_KEYS = sorted({f"method.{f.name}" for c in CONFIGS for f in dataclasses.fields(c)} | {"method.method"})
JUNK_KEYS = [
    "", ".", "train.", ".steps", "train..lr", "TRAIN.steps", "train.steps.x", "steps", "tasks.0",
    "model.path", "nosuch", "train.nosuch", "method.nosuch", "a.b.c", " model", "train.lr ", "=",
    "output_dir.x",
]  # fmt: skip
# options whose valid values cost work in proportion: only small ones are generated
WORK_KEYS = {"train.steps", "train.grad_accum", "train.num_workers", "train.eval_every", "train.log_every"}
WORK_KEYS |= {k for k in METHOD_KEYS if k.split(".")[1] in ("r", "rank", "max_rank", "experts", "ranks")}
WORK_KEYS |= {"method.task_embedding_dim", "train.checkpoint_every"}
MODELS = [
    "model", f"{WORK}model", "empty", "nope", "notes.txt", "run", "run/adapter", "data", "stuff",
    "nope/nested", "model/config.json", "[model]", "null", "1", "''",
]  # fmt: skip
DATA_DIRS = [
    "data", f"{WORK}data", "empty", "nope", "notes.txt", "notes.txt/x", "model", "''", "null", "[data]", "1",
]  # fmt: skip
TASK_LISTS = [
    "[cola]", "[stsb]", "[cola, stsb]", "[stsb, cola]", "[cola, cola]", "[sst2]", "[sentiment]",
    "[rte, mrpc]", "cola", "[COLA]", "[nosuch]", "[1]", "[null]", "[[cola]]", "{cola: 1}", "[fz]",
    "[cola, fz]",
]  # fmt: skip
CUSTOM_TASKS = [
    "[task/fz.yaml]", "task/fz.yaml", "[]", "[notes.txt]", "[empty]", "[nope.yaml]", "[task/train.jsonl]",
    "[model/config.json]", f"[{WORK}task/fz.yaml]", "[task/fz.yaml, task/fz.yaml]",
]  # fmt: skip
TRAIN_SECTIONS = [
    "1", "[]", "x", "[steps]", "{steps: 0}", "{nosuch: 1}", "{steps: -1}",
    "{steps: 1, batch_size: 1, max_train_examples: 2, max_eval_examples: 1, max_length: 8}",
]  # fmt: skip


METHODS = [
    "{method: lora, r: 2}", "{method: multilora, r: 2}", "{method: hilo, experts: '12', ranks: '21'}",
    "{method: moelora, experts: 2, rank: 2, task_embedding_dim: 4}", "{method: mola, experts: '2', rank: 2}",
    "{method: more, max_rank: 2, ranks: [1, 2]}", "{method: more, max_rank: 2, tasks: [cola]}",
    "{method: lora, r: 2, target_modules: nomatch}", "{method: nope}", "{r: 2}",
]  # fmt: skip
CHOICES = {  # the valid values of options that take one of a few (and YAML's traps among them)
    "train.sampling": ["size_softmax", "temperature", "proportional", "uniform"],
    "train.batch_mode": ["single", "mixed"],
    "train.mixed_precision": ["'no'", "no", "fp16", "bf16"],
    "eval_mode": ["score", "generate"],
    "strict": ["true", "false"],
    "method.method": [c.method for c in CONFIGS] + ["LoRA"],
    "method.target_modules": ["all-linear", "q_proj", "[q_proj, v_proj]", "'.*_proj'", "nomatch", "[]"],
    "method.scaling": ["rank", "rslora", "constant"],
    "method.pooling": ["first", "mean"],
}


def raw_for(key: str) -> st.SearchStrategy[str]:
    """YAML text for `--set KEY=...`: paths for the path options, task lists for tasks, small numbers
    where a large valid one would mean long work (a replaced train section keeps a small step count)."""
    head = key.split(".")[0]
    if head == "model":
        return st.sampled_from(MODELS)
    if head == "data_dir":
        return st.sampled_from(DATA_DIRS)
    if head == "output_dir":
        return paths | st.sampled_from(RAW)
    if head == "custom_tasks":
        return st.sampled_from(CUSTOM_TASKS) | st.sampled_from(RAW)
    if key == "tasks":
        return st.sampled_from(TASK_LISTS) | raw_values
    if key == "train":
        return st.sampled_from(TRAIN_SECTIONS)
    if key == "method":
        return st.sampled_from(METHODS) | bounded
    if key in WORK_KEYS:
        return bounded
    if key in CHOICES:
        return st.sampled_from(CHOICES[key]) | raw_values
    return raw_values


# the keys whose values reach the file system, the data or the model, drawn more often than the rest
HOT_KEYS = ["output_dir", "model", "data_dir", "tasks", "custom_tasks", "eval_mode", "train.steps"]
HOT_KEYS += ["train.batch_size", "train.max_length", "train.num_workers", "method.method", "method"]
set_keys = (
    st.sampled_from(HOT_KEYS)
    | st.sampled_from(TOP_KEYS + TRAIN_KEYS + METHOD_KEYS)
    | st.sampled_from(JUNK_KEYS)
    | st.text(alphabet="abtrain._=", max_size=8).filter(lambda k: k.split(".")[0] not in TOP_KEYS)
)
one_item = (
    st.sampled_from(HOT_KEYS)
    | st.sampled_from(sorted(CHOICES))
    | st.sampled_from(TOP_KEYS + TRAIN_KEYS + METHOD_KEYS)
).flatmap(lambda k: raw_for(k).map(lambda v: f"{k}={v}"))
set_items = set_keys.flatmap(lambda k: raw_for(k).map(lambda v: f"{k}={v}")) | st.sampled_from(
    ["train.steps", "", "=1", "=", "train.steps:1", "train.steps= 1"]
)
devices = st.sampled_from(["cpu", "auto", "cuda", "mps", "", "CPU", "cuda:0", "tpu"])
NOISE = [
    ["--foo"], ["-x"], ["--set"], ["--device"], ["--steps", "1"], ["extra"], ["--"], ["-"], ["--set="],
    ["--help"], ["--overwrite=1"], ["--out", "x.json"], ["--task", "cola"], ["--mode"], ["--all-tasks"],
]  # fmt: skip


def options(*extra: st.SearchStrategy[list[str]], max_size: int = 4) -> st.SearchStrategy[list[list[str]]]:
    """A list of option groups: --set items, --device, junk flags and `extra`."""
    group = st.one_of(
        set_items.map(lambda s: ["--set", s]),
        devices.map(lambda d: ["--device", d]),
        st.sampled_from(NOISE),
        *extra,
    )
    return st.lists(group, max_size=max_size)


def with_positional(usual: str, others: list[str], groups: st.SearchStrategy[list[list[str]]]):
    """argv: the option groups with the positional argument between two of them (mostly `usual`, else
    one of `others`; now and then missing)."""

    def build(missing: int, positional: str, groups: list[list[str]], at: int) -> list[str]:
        if missing == 5:
            return [a for g in groups for a in g]
        at = min(at, len(groups))
        return [a for g in [*groups[:at], [positional], *groups[at:]] for a in g]

    positional = st.just(usual) | st.sampled_from(others)
    return st.builds(build, st.integers(0, 5), positional, groups, st.integers(0, 6))


def set_values(argv: list[str], key: str) -> list[str]:
    """The raw values of the `--set KEY=...` items of argv."""
    pairs = itertools.pairwise(argv)
    return [v.partition("=")[2] for flag, v in pairs if flag == "--set" and v.partition("=")[0] == key]


def option_values(argv: list[str], flag: str) -> list[str]:
    values = [v for f, v in itertools.pairwise(argv) if f == flag]
    return values + [a.partition("=")[2] for a in argv if a.startswith(f"{flag}=")]


def recipe_doc(recipe: Path | None) -> object:
    """The recipe as YAML reads it, or None where there is none to read."""
    try:
        return yaml.safe_load(recipe.read_bytes()) if recipe is not None and recipe.is_file() else None
    except (yaml.YAMLError, OSError):
        return None


def doc_output_dirs(doc: object, recipe: Path | None, work: Path) -> list[str]:
    """Where a recipe's output_dir points: from the working folder, and (for a run folder's run.yaml,
    whose paths are relative to itself) from the recipe's folder; RunConfig's default where it has none."""
    value = doc.get("output_dir", DEFAULT_OUTPUT_DIR) if isinstance(doc, dict) else DEFAULT_OUTPUT_DIR
    bases = [work] + ([recipe.parent] if recipe is not None else [])
    return [p for p in (location(value, base) for base in bases) if p is not None]


def output_dirs(argv: list[str], recipe: Path | None, work: Path) -> list[str]:
    """Every folder a train case may write: the recipe's output_dir, each --set output_dir (as typed and
    as YAML reads it), and RunConfig's default."""
    found = [location(DEFAULT_OUTPUT_DIR, work), *doc_output_dirs(recipe_doc(recipe), recipe, work)]
    for raw in set_values(argv, "output_dir"):
        found.append(location(raw, work))
        with contextlib.suppress(ValueError):
            found.append(location(read_yaml(raw, "--set"), work))
    return [p for p in found if p is not None]


def final_output_dirs(argv: list[str], doc: object, recipe: Path | None, work: Path) -> list[str]:
    """Where a successful train case wrote: the last --set output_dir, else the recipe's (see
    doc_output_dirs); empty where that is not a string (then the case cannot succeed)."""
    raws = set_values(argv, "output_dir")
    if not raws:
        return doc_output_dirs(doc, recipe, work)
    try:
        path = location(read_yaml(raws[-1], "--set"), work)
    except ValueError:
        return []
    return [path] if path else []


def train_case(argv: list[str], work: Path, template: Path, doc, recipe: Path | None) -> int:
    """`rankmix train ARGV` in `work`, checked against the recipe `doc` it trains; its exit code."""
    code, out, _ = run_case("train", argv, work, template, output_dirs(argv, recipe, work), diverged_ok=True)
    check_trained(code, out, argv, doc, recipe, work)
    return code


def check_trained(code: int, out: str, argv: list[str], doc: object, recipe: Path | None, work: Path) -> None:
    """A train case that exits 0 (and was not a --help) has trained: results and adapter are there."""
    if code != 0 or out.startswith("usage:"):
        return
    folders = [Path(p) for p in final_output_dirs(argv, doc, recipe, work)]
    assert folders, "a train case succeeded with an output_dir that is not a string"
    trained = [f for f in folders if (f / "results.json").is_file() and (f / "adapter").is_dir()]
    assert trained, f"exit 0, but no results.json and adapter/ in {folders}"
    steps = json.loads((trained[0] / "results.json").read_text())["steps"]
    assert steps <= 6, f"a generated case trained {steps} steps: keep the generators' valid cases cheap"


class Outcomes(Counter):
    """Exit codes over a test's cases, to show that its generator reaches both successes and errors."""

    def require(self, *codes: int) -> None:
        missing = [c for c in codes if not self[c]]
        assert not missing, f"no case ended with exit code {missing}: {dict(self)}"


# -- rankmix train ---------------------------------------------------------------------------------------
RECIPES = [
    "recipe.yaml", f"{WORK}recipe.yaml", "nope.yaml", "empty", "notes.txt", "notes.txt/x.yaml",
    "model/config.json", "run/run.yaml", "task/fz.yaml", "",
]  # fmt: skip
train_flags = st.sampled_from([["--overwrite"], ["--no-progress"]])


def test_train_argv(tmp_path, template):
    """`rankmix train RECIPE ...` with generated --set items, flags and recipe paths: most cases fail
    validation in a millisecond, the ones that pass train one step."""
    outcomes = Outcomes()

    @fuzz(200)
    @given(argv=with_positional("recipe.yaml", RECIPES, options(train_flags, max_size=4)))
    def case(argv):
        with workspace(tmp_path, template) as work:
            named = [Path(location(a, work)) for a in argv if a in RECIPES and a]
            recipe, argv = (named[0] if named else None), [place(a, work) for a in argv]
            doc = recipe_doc(recipe)
            outcomes[train_case(argv, work, template, doc, recipe)] += 1

    case()
    outcomes.require(0, 2)


def test_train_one_set_item(tmp_path, template):
    """`rankmix train recipe.yaml --set KEY=VALUE`, one generated item on the good recipe: every key (the
    path, task, model and method options most often) meets its likely wrong values, and the valid
    ones train."""
    outcomes = Outcomes()

    @fuzz(120)
    @given(item=one_item)
    def case(item):
        with workspace(tmp_path, template) as work:
            recipe = work / "recipe.yaml"
            argv = ["recipe.yaml", "--no-progress", "--set", place(item, work)]
            outcomes[train_case(argv, work, template, GOOD, recipe)] += 1

    case()
    outcomes.require(0, 2)


def test_train_output_dir(tmp_path, template):
    """`rankmix train recipe.yaml --set output_dir=PATH [--overwrite]`, all else good: a PATH that is a
    file, or has a file on its way, is refused; any other trains there, resumes the run there, or is
    refused (a folder of other files) with one line and without touching it."""

    @fuzz(40)
    @given(out=paths | st.sampled_from(RAW), overwrite=st.booleans())
    def case(out, overwrite):
        with workspace(tmp_path, template) as work:
            out = place(out, work)
            argv = ["recipe.yaml", "--no-progress", "--set", f"output_dir={out}"]
            argv += ["--overwrite"] if overwrite else []
            refused = blocked(out, work, folder=True)
            code, stdout, _ = run_case("train", argv, work, template, output_dirs(argv, None, work))
            assert not (refused and code != 2), f"output_dir={out} accepted"
            check_trained(code, stdout, argv, GOOD, None, work)

    case()


def _mutate(doc: dict, section: str | None, key: str, value: object, delete: bool) -> dict:
    out = json.loads(json.dumps(doc))
    target = out if section is None else out.setdefault(section, {})
    if not isinstance(target, dict):  # an earlier change made the section a scalar or a list
        return out
    if delete:
        target.pop(key, None)
    else:
        target[key] = value
    return out


def value_for(section: str | None, key: str) -> st.SearchStrategy[object]:
    """A generated value for a recipe key, as raw_for does for --set (YAML text read back)."""
    dotted = key if section is None else f"{section}.{key}"

    def parsed(text: str) -> object:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text

    if dotted in ("train", "model", "data_dir", "output_dir", "custom_tasks", "tasks") or dotted in WORK_KEYS:
        return raw_for(dotted).map(parsed)
    return values


mutations = (
    st.tuples(
        st.sampled_from([None, "train", "method"]),
        st.sampled_from([k.split(".")[-1] for k in HOT_KEYS])
        | st.sampled_from(TOP_KEYS + [k.split(".", 1)[1] for k in TRAIN_KEYS + METHOD_KEYS])
        | st.text(max_size=6),
        st.booleans(),
    )
    # deleting train or train.steps would mean the default 1000 steps: those keys are only replaced
    .map(lambda t: (*t[:2], t[2] and (t[0], t[1]) not in ((None, "train"), ("train", "steps"))))
    .flatmap(lambda t: value_for(t[0], t[1]).map(lambda v: (t[0], t[1], v, t[2])))
)
good_text = yaml.safe_dump(GOOD, sort_keys=False)
# the train section first (its steps first), so that a cut that keeps model, tasks and method keeps
# train.steps: 1 too, never falling back to the default 1000 steps
train_first = yaml.safe_dump({"train": GOOD["train"], **GOOD}, sort_keys=False)
recipe_bytes = st.one_of(
    st.lists(mutations, min_size=1, max_size=3).map(
        lambda ms: yaml.safe_dump(_fold(ms), sort_keys=False, allow_unicode=True).encode()
    ),
    st.integers(0, len(train_first)).map(lambda n: train_first[:n].encode()),  # a file cut short
    st.text(max_size=80).map(str.encode),
    st.binary(max_size=60),
    st.sampled_from(
        [
            b"",
            b"---\n",
            b"[1, 2]\n",
            b"null\n",
            b"model: [\n",
            b"\xef\xbb\xbf" + good_text.encode(),  # a UTF-8 byte order mark
            good_text.replace("  ", "\t").encode(),  # tabs for indentation
            good_text.encode() + b"model: model\n",  # a repeated key
            good_text.encode() + b"extra: 1\n",
            good_text.encode() + b"\xff\xfe",
            good_text.encode("utf-16"),
            b"model: !!python/name:os.system\n",
            b"tasks: &a [*a]\n" + yaml.safe_dump({k: v for k, v in GOOD.items() if k != "tasks"}).encode(),
        ]
    ),
)


def _fold(ms: list[tuple]) -> dict:
    doc = GOOD
    for section, key, value, delete in ms:
        doc = _mutate(doc, section, key, value, delete)
    return doc


def test_train_recipe_files(tmp_path, template):
    """`rankmix train FILE` on generated recipe documents: mutations of the good tiny recipe (replaced,
    wrongly typed, deleted and unknown keys), cut-short, binary, UTF-16 and otherwise broken YAML."""
    outcomes = Outcomes()

    @fuzz(180)
    @given(
        data=recipe_bytes, extra=st.lists(st.sampled_from([["--overwrite"], ["--no-progress"]]), max_size=1)
    )
    def case(data, extra):
        with workspace(tmp_path, template) as work:
            recipe = work / "fuzzed.yaml"
            recipe.write_bytes(place(data.decode("latin-1"), work).encode("latin-1"))
            note(f"recipe: {data!r}")
            argv = ["fuzzed.yaml", *[a for g in extra for a in g]]
            doc = recipe_doc(recipe)
            code = train_case(argv, work, template, doc, recipe)
            outcomes[code] += 1

    case()
    outcomes.require(0, 2)


# custom task files and their data
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.floats(), st.text(max_size=6))
good_rows = st.fixed_dictionaries(
    {"text": st.text("ab cdé", max_size=8), "label": st.sampled_from(["no", "yes"])}
)
bad_rows = st.dictionaries(
    st.sampled_from(["text", "label", "review", "text_b", "Label", ""]),
    json_scalars | st.lists(json_scalars, max_size=2),
    max_size=3,
)
jsonl_lines = st.one_of(
    good_rows.map(json.dumps),
    bad_rows.map(json.dumps),
    json_scalars.map(json.dumps),
    st.sampled_from(
        ["", "  ", "{", "[1,", "nan", '{"text": "a", "label": "yes"', '{"text": "a", "label": "yes"}}']
    ),
)


def jsonl(lines: st.SearchStrategy[str], max_size: int = 5) -> st.SearchStrategy[bytes]:
    """A JSON-lines file: generated lines, or bytes that are not one (binary, empty, blank, UTF-16)."""
    return st.one_of(
        st.lists(lines, max_size=max_size).map(lambda ls: "\n".join(ls).encode()),
        st.binary(max_size=40),
        st.sampled_from([b"", b"\n\n", b"\xff\xfe\x00", b'{"text": "\xff", "label": "yes"}\n']),
        st.lists(lines, min_size=1, max_size=3).map(lambda ls: "\n".join(ls).encode("utf-16")),
    )


good_files = st.lists(good_rows.map(json.dumps), min_size=1, max_size=4).map(
    lambda ls: "\n".join(ls).encode()
)
CUSTOM_KEYS = [*CUSTOM, "label_words", "metrics", "template", "regression"]
custom_specs = st.one_of(
    st.just(yaml.safe_dump(CUSTOM).encode()),  # twice: the data files matter only with a good task file
    st.lists(
        st.tuples(st.sampled_from(CUSTOM_KEYS) | st.text(max_size=6), values, st.booleans()), max_size=3
    ).map(lambda changes: yaml.safe_dump(_fold_spec(changes), allow_unicode=True).encode()),
    st.just(yaml.safe_dump(CUSTOM).encode()),
    st.text(max_size=60).map(str.encode),
    st.binary(max_size=40),
    st.sampled_from([b"", b"name: [\n", b"- a\n", yaml.safe_dump(CUSTOM).encode("utf-16")]),
)


def _fold_spec(changes: list[tuple]) -> dict:
    spec = dict(CUSTOM)
    for key, value, delete in changes:
        if delete:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


NAMES = ["fz", "../escape", "../../x", "/abs/victim", "a/b", "..", ".h", "-x", "x" * 65, "ü", "fz.v2", ""]


def test_train_custom_task_files(tmp_path, template):
    """`rankmix train` on a recipe with a generated custom task file (a mutation of a good one, or
    broken bytes) over generated data files (JSON lines with wrong fields, invalid JSON, non-UTF-8
    bytes, empty files); or the good task under a generated name ('/', '..', hidden, too long), which
    trains only if it is a usable file name."""
    outcomes = Outcomes()

    @fuzz(150)
    @given(
        spec=custom_specs,
        train=good_files | good_files | jsonl(jsonl_lines),  # good twice: the task trains only on good data
        dev=good_files | good_files | jsonl(jsonl_lines),
        tasks=st.just(["fz"]) | st.sampled_from([["cola", "fz"], ["fz", "fz"], ["cola"]]),
        name=st.none() | st.sampled_from(NAMES),
    )
    def case(spec, train, dev, tasks, name):
        if name is not None:  # the good task under a generated name, which the recipe lists
            spec, tasks = yaml.safe_dump(dict(CUSTOM, name=name)).encode(), [name]
        with workspace(tmp_path, template) as work:
            (work / "task" / "fz.yaml").write_bytes(spec)
            (work / "task" / "train.jsonl").write_bytes(train)
            (work / "task" / "dev.jsonl").write_bytes(dev)
            note(f"task file: {spec!r}\ntrain: {train!r}\ndev: {dev!r}")
            recipe = dict(GOOD, tasks=tasks, custom_tasks=["task/fz.yaml"])
            (work / "custom.yaml").write_text(yaml.safe_dump(recipe))
            argv = ["custom.yaml", "--no-progress"]
            allowed = output_dirs(argv, work / "custom.yaml", work)
            code, out, _ = run_case("train", argv, work, template, allowed)
            check_trained(code, out, argv, recipe, work / "custom.yaml", work)
            if name is not None and code == 0:
                assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", name), f"task name {name!r} accepted"
            outcomes[code] += 1

    case()
    outcomes.require(0, 2)


# -- rankmix eval -----------------------------------------------------------------------------------------
RUNS = ["run", "run/adapter", f"{WORK}run", "run/", "nope", "empty", "notes.txt", "model", "stuff", "run/tb"]
RUNS += ["."]


def test_eval_argv(tmp_path, template):
    """`rankmix eval RUN ...` on a copy of the trained run: generated run paths, --mode, --out (a new
    file, an existing one, a folder, a path under a file), --device and --set items."""
    outcomes = Outcomes()
    eval_options = options(
        paths.map(lambda p: ["--out", p]),
        st.just(["--force"]),
        st.sampled_from(["score", "generate", "", "nope"]).map(lambda m: ["--mode", m]),
        max_size=4,
    )

    @fuzz(120)
    @given(argv=with_positional("run", RUNS, eval_options))
    def case(argv):
        with workspace(tmp_path, template) as work:
            argv = [place(a, work) for a in argv]
            allowed = [p for p in (location(o, work) for o in option_values(argv, "--out")) if p]
            code, out, _ = run_case("eval", argv, work, template, allowed)
            outs = option_values(argv, "--out")
            if code == 0 and not out.startswith("usage:"):
                assert "average" in out, out
                if outs and outs[-1]:
                    results = json.loads(Path(location(outs[-1], work)).read_text())
                    assert isinstance(results, dict) and set(results) <= set(TASKS), results
            outcomes[code] += 1

    case()
    outcomes.require(0, 2)


def test_eval_one_set_item(tmp_path, template):
    """`rankmix eval run --set KEY=VALUE`: the run's own recipe with one generated override, which
    evaluation reads or refuses; it writes nothing (output_dir included)."""
    outcomes = Outcomes()

    @fuzz(60)
    @given(item=one_item)
    def case(item):
        with workspace(tmp_path, template) as work:
            code, out, _ = run_case("eval", ["run", "--set", place(item, work)], work, template, [])
            assert code != 0 or "average" in out, out
            outcomes[code] += 1

    case()
    outcomes.require(0, 2)


def test_eval_out(tmp_path, template):
    """`rankmix eval run --out PATH [--force]`, all else good: a PATH that is a folder, or has a file on its
    way, or would replace an input, a run's file or (without --force) an existing file, is refused with
    a message naming it; any other gets the results as JSON."""

    @fuzz(40)
    @given(out=paths, force=st.booleans())
    def case(out, force):
        with workspace(tmp_path, template) as work:
            out = place(out, work)
            refused = bool(out) and (blocked(out, work) or replaced(out, work, ["run"], force))
            allowed = [location(out, work)] if out else []
            argv = ["run", f"--out={out}", *(["--force"] if force else [])]
            code, _, err = run_case("eval", argv, work, template, allowed)
            if refused:
                assert code == 2, f"--out {out} accepted"
                named = (out, location(out, work))
                assert any(n in err.splitlines()[-1] for n in named), (
                    f"the message does not name {out}: {err}"
                )
            else:
                assert code == 0, err
                assert not out or isinstance(json.loads(Path(location(out, work)).read_text()), dict)

    case()


# -- rankmix predict --------------------------------------------------------------------------------------
text_fields = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8)
predict_rows = st.one_of(
    st.fixed_dictionaries({"text_a": text_fields}, optional={"text_b": text_fields}),
    st.dictionaries(
        st.sampled_from(["text_a", "text_b", "text", "sentence", "label"]),
        json_scalars | st.lists(json_scalars, max_size=2),
        max_size=3,
    ),
    json_scalars,
)
predict_lines = predict_rows.map(json.dumps) | st.sampled_from(["", "  ", "{", "[1,", '{"text_a": "a"'])
INPUTS = [
    "rows.jsonl", f"{WORK}rows.jsonl", "empty", "notes.txt", "nope.jsonl", "notes.txt/x", "run/metrics.jsonl",
]  # fmt: skip
batch_sizes = st.integers(-2, 5).map(str) | st.sampled_from(["0", "1000000000", "two", "1.5", "", "-0"])


def records_of(code: int, out: str, argv: list[str], work: Path) -> list[dict] | None:
    """The records a successful predict case wrote (to --out, or stdout); None if it did not succeed."""
    if code != 0 or out.startswith("usage:"):
        return None
    outs = option_values(argv, "--out")
    text = Path(location(outs[-1], work)).read_text() if outs and outs[-1] else out
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:
        assert isinstance(record, dict) and set(record) in ({"label", "score"}, {"score"}, {"text"}), record
    return records


def test_predict_argv(tmp_path, template):
    """`rankmix predict RUN --task T (--input FILE | --text TEXT) ...` on a copy of the trained run, with a
    generated input file and generated --task, --text, --out, --mode, --batch-size, --device and --set.
    A success writes one record per input row; an empty text or a batch size below 1 is a user error."""
    outcomes = Outcomes()
    predict_options = options(
        st.sampled_from(["cola", "stsb", "COLA", "rte", "nope", ""]).map(lambda t: ["--task", t]),
        st.sampled_from(INPUTS).map(lambda p: ["--input", p]),
        text_fields.map(lambda t: ["--text", t]),
        paths.map(lambda p: ["--out", p]),
        st.just(["--force"]),
        st.sampled_from(["score", "generate", "nope"]).map(lambda m: ["--mode", m]),
        batch_sizes.map(lambda b: ["--batch-size", b]),
        max_size=6,
    )

    @fuzz(180)
    @given(
        argv=with_positional("run", RUNS, predict_options),
        rows=jsonl(predict_lines, max_size=4),
        complete=st.integers(0, 3),
    )
    def case(argv, rows, complete):
        if complete < 3:  # most cases name the task and give one input, so that more of them reach the model
            argv = [*argv, "--task", "cola"] if "--task" not in argv else argv
            if "--input" not in argv and "--text" not in argv:
                argv = [*argv, "--text", "the cat chased the dog ."]
        with workspace(tmp_path, template) as work:
            argv = [place(a, work) for a in argv]
            (work / "rows.jsonl").write_bytes(rows)
            note(f"rows.jsonl: {rows!r}")
            allowed = [p for p in (location(o, work) for o in option_values(argv, "--out")) if p]
            code, out, _ = run_case("predict", argv, work, template, allowed)
            records = records_of(code, out, argv, work)
            if records is not None:
                texts, inputs = option_values(argv, "--text"), option_values(argv, "--input")
                sizes = option_values(argv, "--batch-size")
                assert not (sizes and int(sizes[-1]) < 1), f"--batch-size {sizes[-1]} accepted"
                if texts:
                    assert texts[-1].strip(), f"an empty --text {texts[-1]!r} accepted"
                    assert len(records) == 1, records
                else:
                    lines = Path(location(inputs[-1], work)).read_text(encoding="utf-8").splitlines()
                    assert len(records) == sum(1 for line in lines if line.strip()), records
            outcomes[code] += 1

    case()
    outcomes.require(0, 2)


def test_predict_one_bad_value(tmp_path, template):
    """`rankmix predict` with every option good but a generated --batch-size, --text, --mode and --out:
    the outcome is known exactly. A batch size below 1, an empty (or blank) text and an --out that
    cannot be a file are refused with a message naming the option or the path; the rest predicts one
    record."""

    @fuzz(70)
    @given(
        size=st.integers(-3, 3) | st.sampled_from([10**9]),
        text=text_fields | st.sampled_from(["", " ", "\t\n", "the cat chased the dog ."]),
        mode=st.sampled_from(["score", "generate", None]),
        out=st.none() | paths,
        force=st.booleans(),
    )
    def case(size, text, mode, out, force):
        bad = [name for name, wrong in (("--batch-size", size < 1), ("--text", not text.strip())) if wrong]
        with workspace(tmp_path, template) as work:
            out = out and place(out, work)
            argv = ["run", "--task", "cola", f"--batch-size={size}", f"--text={text}", "--device", "cpu"]
            argv += [f"--mode={mode}"] if mode else []
            argv += [f"--out={out}"] if out else []
            argv += ["--force"] if force else []
            bad += [out] if out and (blocked(out, work) or replaced(out, work, [], force)) else []
            code, stdout, err = run_case(
                "predict", argv, work, template, [location(out, work)] if out else []
            )
            if not bad:
                assert code == 0, err
                assert len(records_of(code, stdout, argv, work)) == 1
            else:
                assert code == 2, f"{bad} accepted"
                last = err.rstrip().splitlines()[-1]
                assert len(bad) > 1 or bad[0] in last, f"the message does not name {bad[0]}: {last}"

    case()
