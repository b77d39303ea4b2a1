"""Built-in scorers and aggregators, registered lazily by name."""
from bench.registry import METRICS  # noqa: F401

# Per-image scorers (metrics/faces.py, attributes.py, clip_score.py, aesthetics.py, q16.py, nudenet.py).
METRICS.register("mtcnn", "metrics.faces:MTCNNFaces")
METRICS.register("insightface", "metrics.faces:InsightFaceFaces")
METRICS.register("fairface", "metrics.attributes:FairFace")
METRICS.register("clip-attributes", "metrics.attributes:CLIPAttributes")
METRICS.register("insightface-genderage", "metrics.attributes:InsightFaceGenderAge")
METRICS.register("age-gender", "metrics.attributes:AgeGender")
METRICS.register("clipscore", "metrics.clip_score:CLIPScore")
METRICS.register("aesthetic", "metrics.aesthetics:LAIONAesthetic")
METRICS.register("q16", "metrics.q16:Q16")
METRICS.register("nudenet", "metrics.nudenet:NudeNet")
