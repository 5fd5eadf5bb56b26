"""Model zoo: registered re-ID models (embedder, classifier, siamese, features, miewid), export, loading,
and publishing (`python -m zoo publish`, `zoo.load(NAME)`, `zoo.list()`)."""
from core.store import list_entries as list_models
from core.store import publish
from zoo import classifier, embedder, fusion, miewid, siamese  # noqa: F401  (registers the models)
from zoo.base import ReIDModel
from zoo.checksum import model_checksum
from zoo.export import load_export, save_export
from zoo.loading import load, load_for_eval, load_model, probe
from zoo.published import PublishedModel  # noqa: F401  (registers the store's `model` kind)
from zoo.registry import MODELS, build_model
from zoo.spec import looks_like_path
from zoo.trunk_config import TrunkConfig

__all__ = ["MODELS", "ReIDModel", "TrunkConfig", "build_model", "list", "list_models", "load", "load_export",
           "load_for_eval", "load_model", "looks_like_path", "model_checksum", "probe", "publish", "save_export"]

list = list_models  # noqa: A001  zoo.list(), as users expect it; zoo.list_models inside the package
