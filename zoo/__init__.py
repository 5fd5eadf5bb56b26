"""Model zoo: registered re-ID models (embedder, classifier, siamese, features), export and loading."""
from zoo import classifier, embedder, siamese  # noqa: F401  (registers the models)
from zoo.base import ReIDModel
from zoo.export import load_export, model_checksum, save_export
from zoo.loading import load_model
from zoo.registry import MODELS, build_model

__all__ = ["MODELS", "ReIDModel", "build_model", "load_export", "load_model", "model_checksum", "save_export"]
