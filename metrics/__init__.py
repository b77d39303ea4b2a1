"""Built-in scorers and aggregators, registered lazily by name."""
from bench.registry import METRICS  # noqa: F401

# Per-image scorers (metrics/faces.py, attributes.py, clip_score.py, aesthetics.py, q16.py,
# nudenet.py).
METRICS.register("mtcnn", "bench.metrics.faces:MTCNNFaces")
METRICS.register("insightface", "bench.metrics.faces:InsightFaceFaces")
METRICS.register("fairface", "bench.metrics.attributes:FairFace")
METRICS.register("clip-attributes", "bench.metrics.attributes:CLIPAttributes")
METRICS.register("insightface-genderage", "bench.metrics.attributes:InsightFaceGenderAge")
METRICS.register("age-gender", "bench.metrics.attributes:AgeGender")
METRICS.register("clipscore", "bench.metrics.clip_score:CLIPScore")
METRICS.register("aesthetic", "bench.metrics.aesthetics:LAIONAesthetic")
METRICS.register("q16", "bench.metrics.q16:Q16")
METRICS.register("nudenet", "bench.metrics.nudenet:NudeNet")
METRICS.register("fid-baseline", "bench.metrics.fid:InceptionFeatures")
METRICS.register("fid", "bench.metrics.fid:InceptionReference")
METRICS.register("pickscore", "bench.metrics.pickscore:PickScore")  # metrics/pickscore.py
METRICS.register("hpsv2", "bench.metrics.hpsv2:HPSv2")  # metrics/hpsv2.py
METRICS.register("imagereward", "bench.metrics.image_reward:ImageReward")  # metrics/image_reward.py
# Skin tone from pixels, no classifier weights (metrics/skin_tone.py); columns skin_tone.*.
METRICS.register("skin_tone", "bench.metrics.skin_tone:SkinTone")


# Aggregators (metrics/aggregators.py): constructed with their columns, e.g.
# Parity("fairface.race", RACES, "race"), Inappropriateness(("q16.flag", "nudenet.flag")).
METRICS.register("parity", "bench.metrics.aggregators:Parity")
METRICS.register("requested-group-rate", "bench.metrics.aggregators:RequestedGroupRate")
METRICS.register("inappropriateness", "bench.metrics.aggregators:Inappropriateness")
METRICS.register("mean-score", "bench.metrics.aggregators:MeanScore")
METRICS.register("latency", "bench.metrics.aggregators:Latency")
METRICS.register("fid-to-baseline", "bench.metrics.fid:FIDToBaseline")
METRICS.register("fid-to-reference", "bench.metrics.fid:FIDToReference")
# Fairness, deeper (metrics/fairness.py): intersections, over-correction, per-group quality.
METRICS.register("intersectional-parity", "bench.metrics.fairness:IntersectionalParity")
METRICS.register("override-rate", "bench.metrics.fairness:OverrideRate")
METRICS.register("requested-group-quality", "bench.metrics.fairness:RequestedGroupQuality")
# Every board: the share of images a filter method blacked out (metrics/filtered.py).
METRICS.register("filtered-rate", "bench.metrics.filtered:FilteredRate")
