"""The config schema of train.py and eval.py. Every key has a `# (type) meaning` comment.

YAML recipes in configs/ set these fields; `key=value` overrides set them on the command line.
Component blocks (`model`, `losses`) are `{name, args}`: the registry checks `args` against the
component's signature; the defaults here name the arguments the default recipe sets.

The defaults ARE the default recipe: `python train.py` trains them (configs/train/default.yaml
only names the output folder and data format), and every other recipe states what it changes.
They are sized for a CPU, trained from scratch, and chosen on the validation parts of
scripts/bench/bench_recipes.py's protocols (DogFaceNet-dev, LionData, ZebraStripes, the synthetic set;
3 minutes on 2 cores), never on the test parts docs/results.md reports:
  * a wall-clock budget is the stopping rule (train.max_minutes, 5 minutes; train.epochs is only
    a cap): a run ends in predictable time on any dataset size, and the cosine schedule anneals
    within the budget. Give more with train.max_minutes=N; train by epochs with max_minutes=0.
  * ArcFace at scale 30 (margin 0.5 rad): at scale 64 a few hundred steps over hundreds of
    identities left the loss high (under-trained), and random resized crops (70-100 % of the
    area, aspect 3:4 to 4:3) with batches of 64, as photos that are not aligned faces need: on the
    validation parts the lions gained much and aligned dog faces kept their score.
  * 96 px: 128 px gave fewer steps and a lower rank-1 in the same time.
  * channels-last, and bf16 autocast where the CPU has the instructions (mixed_precision auto):
    more steps than float32 in the same time.
  * regularised against memorising few individuals: colour jitter/CLAHE, rotation up to 10
    degrees, weight decay 0.05; AdamW at 1e-3 with the class centres at the same lr.
  * the last weights are exported: the schedule ends annealed, and the best validation step,
    picked on a few dozen held-out queries, scored lower on new dogs.
The figures behind each choice are in docs/results.md ("How the defaults were chosen").

core/schema_rules.py says what values each key accepts; core/config.py applies it whenever a
config is built, so a bad value stops before any data is read or model built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

SYNTHETIC = "synthetic"  # data.format of the built-in generated dataset (data/synthetic.py), not a registered reader
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class SyntheticConfig:
    individuals: int = 120  # (int) individuals generated for the built-in dataset
    images_per_individual: int = 12  # (int) photos of each individual
    seed: int = 0  # (int) generator seed: the same seed writes the same dataset
    scenes: bool = False  # (bool) small animals in wide shared scenes, some with a second animal, + YOLO labels
    sites: int = 0  # (int) with scenes: camera sites per species, each individual at one or two, same ground, rocks, vegetation and overlay on every photo of a site (0 = off)


@dataclass
class CropConfig:
    detector: str = ""  # (str) detector export folder (train.py task=detector) or zoo name that crops every image; "" = off
    min_confidence: float = 0.25  # (float) below this, the full image is kept (recorded as a fallback)
    choose: str = "confident"  # (str) with several animals in view: confident (highest score) | central (nearest the centre)
    batch_size: int = 16  # (int) images per detector forward pass
    cache: str = ""  # (str) detection cache; "" = ~/.cache/reidzoo/detections, "none" = off


@dataclass
class DataConfig:
    format: str = "synthetic"  # (str) animalclef2025 | animalclef2026 | wildlifereid10k | humpback | folders | csv | synthetic
    root: str = ""  # (str) dataset root; empty with format=synthetic: generated into the cache dir
    query_root: str = ""  # (str) eval.py, format=folders or csv: a folder of unlabelled photos (searched recursively), each a query matched against the labelled data.root (or, with data.root empty and task=cluster, clustered on their own); "" = off
    columns: Dict[str, str] = field(default_factory=dict)  # (dict) csv format: our column -> yours
    datasets: List[str] = field(default_factory=list)  # (list) keep only these `dataset` values
    species: List[str] = field(default_factory=list)  # (list) keep only these species
    image_size: int = 96  # (int) square side the model sees, in pixels (eval.py: only for models that record none)
    identity_parts: int = 1  # (int) training only: split the identities into this many fixed, disjoint parts (a fusion model's members train on one, the fusion on another)
    identity_part: int = 0  # (int) training only: the part to train on, 0 .. identity_parts - 1
    crop_to_bbox: bool = True  # (bool) crop to the `bbox` column where it is set
    bbox_padding: float = 0.1  # (float) padding around the bbox (annotated or detected), as a fraction of its size
    cache_dir: str = ""  # (str) resized-image cache; "" = ~/.cache/reidzoo/images, "none" = off
    num_workers: int = 2  # (int) DataLoader worker processes
    verify_images: bool = True  # (bool) open every image header once before training/evaluation (format folders and data.query_root: decode every photo once, the verdict cached)
    skip_unreadable: bool = False  # (bool) format folders and data.query_root: leave out photos that cannot be decoded or are in a format PIL cannot open (named in a warning); false = refuse them, all named at once
    orientation_rules: Dict[str, Dict[str, float]] = field(default_factory=dict)  # (dict) dataset -> {orientation: degrees}
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))  # (list) normalisation mean
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))  # (list) normalisation std
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # (section) built-in dataset
    crop: CropConfig = field(default_factory=CropConfig)  # (section) crop every image to a trained detector's box (bbox_padding around it)


@dataclass
class AugmentConfig:
    scale: List[float] = field(default_factory=lambda: [0.7, 1.0])  # (list) RandomResizedCrop area range ([1, 1] = no crop)
    ratio: List[float] = field(default_factory=lambda: [0.75, 1.333])  # (list) RandomResizedCrop aspect range
    hflip: float = 0.5  # (float) p of HorizontalFlip
    color: float = 0.5  # (float) p of one of (CLAHE, ColorJitter)
    rotate: float = 10.0  # (float) max rotation in degrees (0 = off)
    rotate_p: float = 0.5  # (float) p of the rotation
    blur: float = 0.0  # (float) p of one of (MotionBlur, Downscale)
    gray: float = 0.0  # (float) p of ToGray


@dataclass
class SamplerConfig:
    name: str = "random"  # (str) pk (P identities x K images) | balanced (class-balanced oversampling) | random
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
    epochs: int = 1000  # (int) passes over the training identities (a cap when max_minutes is set)
    max_steps: int = 0  # (int) stop after this many optimizer steps (0 = epochs decide)
    max_minutes: float = 5.0  # (float) wall-clock budget of training steps; stop at the next step after it (0 = epochs decide)
    batch_size: int = 64  # (int) images per optimizer step per process, before accumulation
    optimizer: str = "adamw"  # (str) adamw | sgd
    lr: float = 1e-3  # (float) peak learning rate (after warmup)
    weight_decay: float = 0.05  # (float) decoupled weight decay (AdamW) or L2 (SGD); not on norms/biases
    momentum: float = 0.9  # (float) SGD momentum (Nesterov)
    head_lr_mult: float = 1.0  # (float) lr multiplier of loss parameters (ArcFace class centres)
    warmup_steps: int = 50  # (int) linear warmup from 0
    min_lr_ratio: float = 0.01  # (float) cosine floor as a fraction of lr
    grad_accum: int = 1  # (int) micro-batches accumulated into one optimizer step
    clip_grad: float = 5.0  # (float) max gradient norm (0 = no clipping)
    mixed_precision: str = "auto"  # (str) auto (bf16/fp16 on GPU; bf16 on CPUs with AVX512-BF16/AMX, else off) | no | fp16 | bf16
    ema: bool = False  # (bool) keep an exponential moving average of the weights for eval/export
    ema_decay: float = 0.999  # (float) EMA decay per step, reached after a ramp (1 - (1 + step) ** -2/3)
    checkpoint_every: int = 200  # (int) save full training state every N steps (0 = epoch ends only)
    keep_last: int = 2  # (int) checkpoints kept
    log_every: int = 10  # (int) TensorBoard scalars every N steps
    deterministic: bool = False  # (bool) deterministic algorithms (bitwise-reproducible on CPU)
    channels_last: bool = True  # (bool) channels-last memory format (faster on recent GPUs and with oneDNN on CPU)


@dataclass
class ValidationConfig:
    enabled: bool = True  # (bool) hold out identities and evaluate during training
    fraction: float = 0.1  # (float) fraction of training identities held out for validation
    unknown_fraction: float = 0.2  # (float) of the held-out identities, fraction only in the query set
    every_epochs: int = 1  # (int) validate every N epochs (and at the end)
    best_metric: str = "geometric_mean"  # (str) rank1 | mAP | BAKS | BAUS | geometric_mean
    export: str = "last"  # (str) weights exported: best (by best_metric) | last (end of the schedule)
    max_images: int = 2000  # (int) cap on validation images, for speed


@dataclass
class MemberFeaturesConfig:
    tta: List[str] = field(default_factory=lambda: ["identity", "hflip"])  # (list) views averaged into each member's features, as eval.py's `tta` (equal settings share its cache entries)
    train_views: List[str] = field(default_factory=list)  # (list) single views (e.g. [hflip]) also extracted; each training item reads one of them or the averaged features at random
    batch_size: int = 64  # (int) extraction batch size per process
    cache: str = ""  # (str) as eval.py's embed_cache: "" = ~/.cache/reidzoo/embeddings, "none" = off


@dataclass
class TrainConfig:
    task: str = "reid"  # (str) reid | detector (configs/train/detector_yolo.yaml: train a crop detector)
    plugins: List[str] = field(default_factory=list)  # (list) your own modules to import first: their @REGISTRY.register components become valid names (docs/extending.md)
    output_dir: str = "runs/default"  # (str) run directory: checkpoints, TensorBoard, export/
    seed: int = 0  # (int) seed of splits, sampling, augmentation and initialisation
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ComponentConfig = field(default_factory=lambda: ComponentConfig(
        name="embedder", args={"backbone": "resnet18", "pretrained": False, "embed_dim": 256}))
    losses: List[LossConfig] = field(default_factory=lambda: [LossConfig(
        name="arcface", args={"margin": 0.5, "scale": 30.0})])
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    val: ValidationConfig = field(default_factory=ValidationConfig)
    features: MemberFeaturesConfig = field(default_factory=MemberFeaturesConfig)  # models over other models' embeddings (fusion): how those are extracted


@dataclass
class RetrievalConfig:
    k: int = 100  # (int) database images retrieved per query
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
    value: Optional[float] = None  # (float) fixed threshold; null = tune on held-out database identities (never on query labels)
    per_dataset: bool = True  # (bool) tune one threshold per `dataset` (else one global)
    holdout_fraction: float = 0.3  # (float) database identities held out to tune the threshold
    unknown_fraction: float = 0.2  # (float) of those, fraction acting as "new" individuals
    min_queries: int = 300  # (int) small databases: draw further held-out splits until this many validation queries
    max_splits: int = 10  # (int) at most this many held-out splits (their validation queries are pooled)


@dataclass
class RerankConfig:
    # SIFT by default: on the validation parts of scripts/bench/bench_recipes.py it raised the mean open-set
    # score (most on the synthetic set, the real sets about level), is cheap on a CPU, and needs no
    # weights; its tuned weight falls to 0 where matching does not help. Every keypoint weighting is
    # listed for the held-out split to keep or drop: on camera photos sharing backgrounds they are
    # what tells individuals apart, and elsewhere the split drops them (figures: docs/results.md).
    matcher: str = "sift"  # (str) keypoint matcher re-scoring the shortlist: none | aliked_lightglue | disk_lightglue | sift | rootsift (SIFT on Hellinger roots)
    matcher_args: Dict[str, Any] = field(default_factory=dict)  # (dict) matcher-specific: variant (aliked-n16rot for rotated views), filter_threshold, batched (lightglue: null = on a GPU), ratio, threads (sift)
    shortlist: int = 25  # (int) database images per query re-scored by the matcher and by Siamese pair heads
    weight: float = 1.0  # (float) the matcher's soft-voting weight (a model's is its `weights` entry, 1 by default)
    tune_weight: bool = True  # (bool) choose the weight among 0-4 on the threshold's held-out database split (weight wins ties)
    tune_pair_weight: bool = True  # (bool) scale each pair head's vote by 0, 0.25, 0.5 or 1, chosen on the same split (1 wins ties): a pair head trained on other individuals may rank pairs by chance here
    side: int = 512  # (int) longer image side the matcher sees, in pixels (smaller images are not upscaled)
    max_keypoints: int = 512  # (int) keypoints per image (time per pair grows about with its square)
    score: str = "inliers"  # (str) a pair's raw score: inliers (of one geometric model) | matches
    geometry: str = "fundamental"  # (str) score=inliers: fundamental (rigid 3-D) | homography (one plane) | affine | similarity (shift, turn, scale)
    geometries: List[str] = field(default_factory=list)  # (list) score=inliers: other geometries the held-out split may verify with instead (each pair's stored matches fitted again, without those its weightings drop); e.g. [similarity, affine]
    ransac_threshold: float = 4.0  # (float) score=inliers: RANSAC inlier distance, pixels at `side`
    burstiness: bool = False  # (bool) a query keypoint matched in images of k identities counts 1/k (background-like), always
    weighting: List[str] = field(default_factory=lambda: ["confusers", "burstiness", "foreground"])  # (list) keypoint weightings, a match counting the product of their weights; each kept only where it helps on the held-out split (with tune_weight): confusers (database keypoints matched by other identities) | burstiness | foreground; [] = none
    weighting_args: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # (dict) per weighting its arguments: confusers {shortlist, power}, burstiness {power}, foreground {...}
    region: float = 1.0  # (float) keep keypoints in this central fraction of the image's width and height only
    min_matches: int = 0  # (int) pairs with fewer tentative matches skip RANSAC and count 0 inliers; 0 = the geometry's minimum (8 fundamental, 4 homography: same inliers as verifying all)
    calibration_queries: int = 200  # (int) database images whose shortlists calibrate the matcher
    adaptive: bool = False  # (bool) queries whose global vote is already certain (a margin from the threshold and the second identity, chosen on the threshold's held-out split) skip matching
    neighbours: List[str] = field(default_factory=list)  # (list) re-ranking without pixels, each a shortlist scorer with a tuned weight: kreciprocal | alpha_qe | dba
    cache: str = ""  # (str) keypoint and match cache; "" = ~/.cache/reidzoo/keypoints, "none" = off


@dataclass
class ClusterConfig:
    # eval.py task=cluster (AnimalCLEF 2026; a folder of unlabelled photos): docs/clustering.md
    method: str = "agglomerative"  # (str) registered clusterer: agglomerative (average linkage on 1 - P) | components (threshold graph, min-edge rule) | leiden (Leiden communities, needs the [cluster] extra)
    args: Dict[str, Any] = field(default_factory=dict)  # (dict) the method's own arguments: components {min_edges}, leiden {iterations, seed}
    neighbours: int = 10  # (int) graph edges: each image's k nearest neighbours under every global scorer (faiss, within its dataset)
    threshold: Optional[float] = None  # (float) P(same individual) at which images join (leiden: the resolution); null = tuned by ARI on held-out train identities
    grid: List[float] = field(default_factory=lambda: [round(0.05 * i, 2) for i in range(1, 20)])  # (list) thresholds tried first by the tuning; widened towards 0 or 1 while the best is at an end (docs/clustering.md)
    criterion: str = "ari"  # (str) registered cluster_criterion the threshold is tuned for on held-out train identities: ari (AnimalCLEF 2026's score) | ami | count; defaults chosen leaving each development dataset out, with the default keypoint matcher (docs/clustering.md)
    count_criterion: str = "same"  # (str) the population count's threshold: same (the count is the clusters written) | a registered cluster_criterion, e.g. count (as many clusters as individuals on the held-out images)
    unlabelled: str = "unanchored"  # (str) registered unlabelled_threshold strategy for a dataset without train images: unanchored (best on the labelled datasets clustered without anchors) | transfer (best on their anchored validation) | mixture (from its own edges' similarities)
    per_dataset: bool = True  # (bool) one threshold per dataset; a dataset without train images takes the one best over the others
    holdout_fraction: float = 0.5  # (float) of each dataset's train identities, held out to simulate the test
    unknown_fraction: float = 0.5  # (float) of those, held out whole (new individuals); the others send half their images
    splits: int = 2  # (int) simulated tests whose ARI curves are averaged
    anchors: bool = True  # (bool) train images anchor their identity's cluster (a test image joins it, or not, by the threshold)


@dataclass
class EvalConfig:
    output_dir: str = "runs/default/eval"  # (str) where submission.csv, metrics.json, report.html go
    task: str = "identify"  # (str) identify (name each query image or call it new) | cluster (group the query/test images by individual: `cluster`)
    plugins: List[str] = field(default_factory=list)  # (list) your own modules to import first: their @REGISTRY.register components become valid names (docs/extending.md)
    seed: int = 0  # (int) seed of the threshold-tuning split
    models: List[str] = field(default_factory=lambda: ["runs/default/export"])  # (list) export dirs, zoo names or timm names
    weights: List[float] = field(default_factory=list)  # (list) soft-voting weight per model (empty = equal)
    tta: List[str] = field(default_factory=lambda: ["identity", "hflip"])  # (list) views averaged in embedding space: identity | hflip | fivecrop
    batch_size: int = 64  # (int) extraction batch size per process
    embed_cache: str = ""  # (str) embedding cache dir; "" = ~/.cache/reidzoo/embeddings ($REIDZOO_CACHE/embeddings), "none" = off
    calibration: str = "isotonic"  # (str) scores -> P(same individual): isotonic | logistic | none
    choose_scoring: bool = True  # (bool) with a fusion model: per dataset, score by the fusion, a member alone, the members' blend or soft vote, whichever scores best on the threshold's held-out database split (the ensemble as given wins ties)
    submission: str = "auto"  # (str) auto (task=cluster: animalclef2026; humpback for data.format=humpback; else animalclef) | animalclef | humpback | animalclef2026
    report: bool = True  # (bool) write report.html
    review: str = ""  # (str) a person's answers to apply (the review-answers.sqlite of `reidzoo-review`, docs/review.md): the submission and table hold the reviewed decisions, marked decided_by=person
    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    rerank: RerankConfig = field(default_factory=RerankConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

