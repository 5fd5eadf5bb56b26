"""The config schema of train.py and eval.py. Every key has a `# (type) meaning` comment.

YAML recipes in configs/ set these fields; `key=value` overrides set them on the command line.
Component blocks (`model`, `losses`) are `{name, args}`: the registry checks `args` against the
component's signature, so defaults of a component live with its code, not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class SyntheticConfig:
    individuals: int = 120  # (int) individuals generated for the built-in dataset
    images_per_individual: int = 12  # (int) photos of each individual
    seed: int = 0  # (int) generator seed: the same seed writes the same dataset


@dataclass
class DataConfig:
    format: str = "synthetic"  # (str) animalclef2025 | wildlifereid10k | humpback | folders | csv | synthetic
    root: str = ""  # (str) dataset root; empty with format=synthetic: generated into the cache dir
    columns: Dict[str, str] = field(default_factory=dict)  # (dict) csv format: our column -> yours
    datasets: List[str] = field(default_factory=list)  # (list) keep only these `dataset` values
    species: List[str] = field(default_factory=list)  # (list) keep only these species
    image_size: int = 128  # (int) square side the model sees, in pixels
    crop_to_bbox: bool = True  # (bool) crop to the `bbox` column where it is set
    bbox_padding: float = 0.1  # (float) padding around the bbox, as a fraction of its size
    cache_dir: str = ""  # (str) resized-image cache; "" = ~/.cache/reidzoo/images, "none" = off
    num_workers: int = 2  # (int) DataLoader worker processes
    verify_images: bool = True  # (bool) open every image header once before training/evaluation
    orientation_rules: Dict[str, Dict[str, float]] = field(default_factory=dict)  # (dict) dataset -> {orientation: degrees}
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))  # (list) normalisation mean
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))  # (list) normalisation std
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # (section) built-in dataset


@dataclass
class AugmentConfig:
    scale: List[float] = field(default_factory=lambda: [0.6, 1.0])  # (list) RandomResizedCrop area range
    ratio: List[float] = field(default_factory=lambda: [0.75, 1.333])  # (list) RandomResizedCrop aspect range
    hflip: float = 0.5  # (float) p of HorizontalFlip
    color: float = 0.5  # (float) p of one of (CLAHE, ColorJitter)
    rotate: float = 15.0  # (float) max rotation in degrees (0 = off)
    rotate_p: float = 0.5  # (float) p of the rotation
    blur: float = 0.2  # (float) p of one of (MotionBlur, Downscale)
    gray: float = 0.05  # (float) p of ToGray


@dataclass
class SamplerConfig:
    name: str = "pk"  # (str) pk (P identities x K images) | balanced (class-balanced oversampling) | random
    k: int = 4  # (int) pk: images per identity in a batch (P = batch_size / k)


@dataclass
class ComponentConfig:
    name: str = ""  # (str) registered name
    args: Dict[str, Any] = field(default_factory=dict)  # (dict) keyword arguments of the component


@dataclass
class LossConfig:
    name: str = "arcface"  # (str) registered loss name
    weight: float = 1.0  # (float) weight in the summed loss
    args: Dict[str, Any] = field(default_factory=dict)  # (dict) keyword arguments of the loss


@dataclass
class TrainLoopConfig:
    epochs: int = 10  # (int) passes over the training identities
    max_steps: int = 0  # (int) stop after this many optimizer steps (0 = epochs decide)
    max_minutes: float = 0.0  # (float) wall-clock budget; stop at the next step after it (0 = none)
    batch_size: int = 32  # (int) images per optimizer step per process, before accumulation
    optimizer: str = "adamw"  # (str) adamw | sgd
    lr: float = 1e-3  # (float) peak learning rate (after warmup)
    weight_decay: float = 0.05  # (float) decoupled weight decay (AdamW) or L2 (SGD); not on norms/biases
    momentum: float = 0.9  # (float) SGD momentum (Nesterov)
    head_lr_mult: float = 10.0  # (float) lr multiplier of loss parameters (ArcFace class centres)
    warmup_steps: int = 100  # (int) linear warmup from 0
    min_lr_ratio: float = 0.01  # (float) cosine floor as a fraction of lr
    grad_accum: int = 1  # (int) micro-batches accumulated into one optimizer step
    clip_grad: float = 5.0  # (float) max gradient norm (0 = no clipping)
    mixed_precision: str = "auto"  # (str) auto (bf16/fp16 on GPU; bf16 on CPUs with AVX512-BF16/AMX, else off) | no | fp16 | bf16
    ema: bool = False  # (bool) keep an exponential moving average of the weights for eval/export
    ema_decay: float = 0.999  # (float) EMA decay per step
    checkpoint_every: int = 200  # (int) save full training state every N steps (0 = epoch ends only)
    keep_last: int = 2  # (int) checkpoints kept
    log_every: int = 10  # (int) TensorBoard scalars every N steps
    deterministic: bool = False  # (bool) deterministic algorithms (bitwise-reproducible on CPU)
    channels_last: bool = False  # (bool) channels-last memory format (faster on recent GPUs and with oneDNN on CPU)


@dataclass
class ValidationConfig:
    enabled: bool = True  # (bool) hold out identities and evaluate during training
    fraction: float = 0.2  # (float) fraction of training identities held out for validation
    unknown_fraction: float = 0.2  # (float) of the held-out identities, fraction only in the query set
    every_epochs: int = 1  # (int) validate every N epochs (and at the end)
    best_metric: str = "geometric_mean"  # (str) rank1 | mAP | BAKS | BAUS | geometric_mean
    export: str = "best"  # (str) weights exported: best (by best_metric) | last (end of the schedule)
    max_images: int = 2000  # (int) cap on validation images, for speed


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"  # (str) run directory: checkpoints, TensorBoard, export/
    seed: int = 0  # (int) seed of splits, sampling, augmentation and initialisation
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ComponentConfig = field(default_factory=lambda: ComponentConfig(name="embedder"))
    losses: List[LossConfig] = field(default_factory=lambda: [LossConfig()])
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    val: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class RetrievalConfig:
    k: int = 100  # (int) gallery images retrieved per query
    index: str = "flat"  # (str) flat (exact) | ivf | hnsw (approximate, for very large galleries)
    nlist: int = 0  # (int) ivf: number of clusters (0 = 4*sqrt(N))
    nprobe: int = 16  # (int) ivf: clusters searched
    hnsw_m: int = 32  # (int) hnsw: graph degree
    ef_search: int = 128  # (int) hnsw: search breadth
    ef_construction: int = 200  # (int) hnsw: build breadth (graph quality)
    aggregation: str = "max"  # (str) identity score: max | mean_top_m
    m: int = 3  # (int) mean_top_m: images averaged per identity
    use_gpu: bool = True  # (bool) use a faiss GPU index when faiss-gpu and a GPU are present


@dataclass
class ThresholdConfig:
    value: Optional[float] = None  # (float) fixed threshold; null = tune on a held-out split
    per_dataset: bool = True  # (bool) tune one threshold per `dataset` (else one global)
    holdout_fraction: float = 0.3  # (float) database identities held out to tune the threshold
    unknown_fraction: float = 0.2  # (float) of those, fraction acting as "new" individuals


@dataclass
class EvalConfig:
    output_dir: str = "runs/default/eval"  # (str) where submission.csv, metrics.json, report.html go
    seed: int = 0  # (int) seed of the threshold-tuning split
    models: List[str] = field(default_factory=lambda: ["runs/default/export"])  # (list) export dirs, zoo names or timm names
    weights: List[float] = field(default_factory=list)  # (list) soft-voting weight per model (empty = equal)
    tta: List[str] = field(default_factory=lambda: ["identity", "hflip"])  # (list) identity | hflip | fivecrop
    batch_size: int = 64  # (int) extraction batch size per process
    embed_cache: str = ""  # (str) embedding cache dir; "" = ~/.cache/reidzoo/embeddings, "none" = off
    calibration: str = "isotonic"  # (str) isotonic | logistic | none
    submission: str = "auto"  # (str) auto (from data.format) | animalclef | humpback
    report: bool = True  # (bool) write report.html
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
