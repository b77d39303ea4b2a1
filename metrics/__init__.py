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
METRICS.register("fid-baseline", "metrics.fid:InceptionFeatures")
METRICS.register("fid", "metrics.fid:InceptionReference")
# Skin tone from pixels, no classifier weights (metrics/skin_tone.py); columns skin_tone.*.
METRICS.register("skin_tone", "metrics.skin_tone:SkinTone")

# The synthetic world's own evaluators (metrics/world_evaluators.py).
METRICS.register("world", "metrics.world_evaluators:WorldScorer")
METRICS.register("world-clipscore", "metrics.world_evaluators:WorldCLIPScore")
METRICS.register("world-fid", "metrics.fid:WorldCLIPFeatures")

# Aggregators (metrics/aggregators.py): constructed with their columns, e.g.
# Parity("fairface.race", RACES, "race"), Inappropriateness(("q16.flag", "nudenet.flag")).
METRICS.register("parity", "metrics.aggregators:Parity")
METRICS.register("requested-group-rate", "metrics.aggregators:RequestedGroupRate")
METRICS.register("inappropriateness", "metrics.aggregators:Inappropriateness")
METRICS.register("mean-score", "metrics.aggregators:MeanScore")
METRICS.register("latency", "metrics.aggregators:Latency")
METRICS.register("fid-to-baseline", "metrics.fid:FIDToBaseline")
METRICS.register("fid-to-reference", "metrics.fid:FIDToReference")
METRICS.register("world-fid-to-renders", "metrics.fid:WorldFID")
