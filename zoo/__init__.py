"""Model zoo: registered re-ID models (embedder, classifier, siamese, features), export and loading."""
from zoo import classifier, embedder, siamese  # noqa: F401  (registers the models)
from zoo.base import ReIDModel
from zoo.checksum import model_checksum
from zoo.export import load_export, save_export
from zoo.loading import load_for_eval, load_model, looks_like_path, probe
from zoo.registry import MODELS, build_model
from zoo.trunk_config import TrunkConfig

__all__ = ["MODELS", "ReIDModel", "TrunkConfig", "build_model", "load_export", "load_for_eval", "load_model",
           "looks_like_path", "model_checksum", "probe", "save_export"]
