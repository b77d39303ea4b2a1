"""FairFace as its publisher runs it (github.com/dchen236/FairFace, predict.py).

The reference pipeline is rebuilt here step by step from predict.py: the image's longer side to
800 px with dlib.resize_image, dlib's CNN detector with one upsampling, 5-point landmarks,
dlib.get_face_chip(size=300, padding=0.25), then ToPILImage, Resize((224, 224)), ToTensor,
ImageNet Normalize, torchvision resnet34 with fc 512 -> 18, and numpy softmax over the slices
predict.py reads. Weight files are built in the publisher's container (torch.save of the model's
state_dict) with random values. The face is scikit-image's `astronaut` (public domain).

dlib's CNN detector costs ~15 s per image on one CPU thread whatever the image holds (every image
is resized to 800 px and upsampled once), so the astronaut is detected once per process (the
scorer caches chips by image content) and the no-face image is a thin strip.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

dlib = pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")

from bench.metrics.attributes import (  # noqa: E402
    AGES, DLIB_DETECTOR, DLIB_LANDMARKS, GENDERS, RACES, RACES4, FairFace)
from bench.metrics.faces import fairface_chips, packaged_dlib_model  # noqa: E402

DETECTOR = packaged_dlib_model(DLIB_DETECTOR)
LANDMARKS = packaged_dlib_model(DLIB_LANDMARKS)
pytestmark = pytest.mark.skipif(DETECTOR is None or not DETECTOR.is_file(),
                                reason="face-recognition-models is not installed")
STRIP = Image.new("RGB", (400, 20), (128, 128, 128))  # no face; cheap to search at 800 x 40


def publisher_resize(img: np.ndarray, default_max_size: int = 800) -> np.ndarray:
    """predict.py's detect_face, before detection."""
    old_height, old_width, _ = img.shape
    if old_width > old_height:
        new_width, new_height = default_max_size, int(default_max_size * old_height / old_width)
    else:
        new_width, new_height = int(default_max_size * old_width / old_height), default_max_size
    return dlib.resize_image(img, rows=new_height, cols=new_width)


@pytest.fixture(scope="module")
def reference_chip() -> np.ndarray:
    """dlib.get_face_chip on the astronaut, through predict.py's own steps."""
    img = publisher_resize(skimage_data.astronaut())
    detector = dlib.cnn_face_detection_model_v1(str(DETECTOR))
    predictor = dlib.shape_predictor(str(LANDMARKS))
    (found,) = detector(img, 1)
    return dlib.get_face_chip(img, predictor(img, found.rect), size=300, padding=0.25)


@pytest.fixture(scope="module")
def our_chips() -> list[np.ndarray]:
    return fairface_chips(Image.fromarray(skimage_data.astronaut()), str(DETECTOR), str(LANDMARKS))


def publisher_outputs(path, chip: np.ndarray) -> np.ndarray:
    """predict.py's 18 outputs for one chip: its model construction, transform and forward."""
    import torchvision
    from torchvision import transforms

    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 18)
    model.load_state_dict(torch.load(path, weights_only=True))
    trans = transforms.Compose([
        transforms.ToPILImage(), transforms.Resize((224, 224)), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    with torch.no_grad():
        outputs = model.eval()(trans(chip).view(1, 3, 224, 224))
    return np.squeeze(outputs.numpy())


def softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(x) / np.sum(np.exp(x))  # predict.py's formula


def fairface_file(path, seed: int):
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet34(weights=None)
    model.fc = torch.nn.Linear(512, 18)
    torch.save(model.state_dict(), path)  # the publisher's container
    return path


def test_chip_equals_dlib_get_face_chip(our_chips, reference_chip):
    assert len(our_chips) == 1
    chip = our_chips[0]
    assert chip.shape == (300, 300, 3) and chip.dtype == np.uint8
    assert np.abs(chip.astype(int) - reference_chip.astype(int)).max() <= 2
    # Aligned: the eyes found again on the chip are level (the astronaut's head is rolled ~3 deg;
    # the old MTCNN box crop left them 4.5 px apart vertically at this size).
    predictor = dlib.shape_predictor(str(LANDMARKS))
    pts = np.array([[p.x, p.y] for p in predictor(chip, dlib.rectangle(50, 50, 250, 250)).parts()], float)
    assert abs(pts[0:2, 1].mean() - pts[2:4, 1].mean()) <= 1.5


def test_no_face_gives_no_chip():
    assert fairface_chips(STRIP, str(DETECTOR), str(LANDMARKS)) == []


def test_7_race_file_scores_as_predict_py(tmp_path, our_chips, reference_chip):
    path = fairface_file(tmp_path / "res34_fair_align_multi_7_20190809.pt", seed=1)
    scorer = FairFace(weights=str(path), device="cpu")
    assert scorer.available() is None
    scorer.check()
    out = scorer.score([Image.fromarray(skimage_data.astronaut()), STRIP], None)

    z = publisher_outputs(path, reference_chip)
    ref = {"race": softmax(z[:7]), "gender": softmax(z[7:9]), "age": softmax(z[9:18])}
    ours = scorer.probabilities(our_chips)
    for field in ref:
        np.testing.assert_allclose(ours[field][0], ref[field], atol=1e-5)
    assert out["fairface.race"].iloc[0] == RACES[int(np.argmax(ref["race"]))]
    assert out["fairface.gender"].iloc[0] == GENDERS[int(np.argmax(ref["gender"]))]
    assert out["fairface.age"].iloc[0] == AGES[int(np.argmax(ref["age"]))]
    assert out.iloc[1, 1:].isna().all()  # no face: no labels
    assert out["fairface.n_faces"].tolist() == [1, 0]


def test_4_race_file_is_labelled_white_black_asian_indian(tmp_path, our_chips, reference_chip):
    path = fairface_file(tmp_path / "res34_fair_align_multi_4_20190809.pt", seed=2)
    scorer = FairFace(weights=str(path), device="cpu")
    out = scorer.score([Image.fromarray(skimage_data.astronaut())], None)

    race_score = softmax(publisher_outputs(path, reference_chip)[:4])  # predict.py's race4
    np.testing.assert_allclose(scorer.probabilities(our_chips)["race4"][0], race_score, atol=1e-5)
    assert out["fairface.race4"].tolist() == [RACES4[int(np.argmax(race_score))]]
    # predict.py reads nothing else from this file: no 7-race, gender or age columns from it.
    assert sorted(out.columns) == ["fairface.n_faces", "fairface.race4"]
    # The same file under another name, with the option, reads the same.
    renamed = tmp_path / "ff4.pt"
    renamed.write_bytes(path.read_bytes())
    again = FairFace(weights=str(renamed), races="4", device="cpu")
    assert again.score([Image.fromarray(skimage_data.astronaut())], None).equals(out)


def test_the_race_count_is_never_guessed(tmp_path):
    from bench.scoring import check_scorers
    from bench.spec import SpecError

    for name in ("fairface.pt", "fairface_alldata_20191111.pt", "fairface_alldata_4race_20191111.pt"):
        (tmp_path / name).touch()  # identified by name alone: the contents are check()'s business
    other = str(tmp_path / "fairface.pt")
    with pytest.raises(ValueError, match=r"fairface.pt: .*pass fairface:races=7 or fairface:races=4"):
        FairFace(weights=other)
    with pytest.raises(SpecError, match=r"^metric 'fairface:weights=.*fairface:races=7") as e:
        check_scorers([f"fairface:weights={other}"], "cpu")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="races=7, but res34_fair_align_multi_4_20190809.pt is FairFace's 4-race"):
        FairFace(weights=str(tmp_path / "res34_fair_align_multi_4_20190809.pt"), races="7")
    with pytest.raises(ValueError, match="use races=4 or races=7"):
        FairFace(weights=other, races="5")
    assert FairFace(weights=other, races="4").fields == ("race4",)
    assert "not found" in FairFace(weights=str(tmp_path / "missing.pt")).available()  # a skip, not this error
    assert FairFace(weights=str(tmp_path / "fairface_alldata_20191111.pt")).fields == ("race", "gender", "age")
    assert FairFace(weights=str(tmp_path / "fairface_alldata_4race_20191111.pt")).fields == ("race4",)


def test_bad_files_are_named_in_one_line(tmp_path):
    import torchvision

    net = torchvision.models.resnet34(weights=None)
    net.fc = torch.nn.Linear(512, 7)  # a 7-output head: not FairFace's
    wrong = tmp_path / "wrong.pt"
    torch.save(net.state_dict(), wrong)
    with pytest.raises(ValueError, match=r"wrong.pt: .*fc.weight is \(7, 512\), expected \(18, 512\)"):
        FairFace(weights=str(wrong), races="7").check()

    pickled = tmp_path / "model.pt"
    torch.save(net, pickled)  # a whole pickled module, not a state dict
    with pytest.raises(ValueError, match=r"model.pt: not a tensor state dict torch.load\(weights_only=True\)") as e:
        FairFace(weights=str(pickled), races="7").check()
    assert "\n" not in str(e.value)

    good = fairface_file(tmp_path / "res34_fair_align_multi_7_20190809.pt", seed=0)
    with pytest.raises(ValueError, match=r"dlib cannot read it") as e:
        FairFace(weights=str(good), landmarks=str(DETECTOR)).check()
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"a 68-point shape predictor"):
        lm68 = packaged_dlib_model("shape_predictor_68_face_landmarks.dat")
        FairFace(weights=str(good), landmarks=str(lm68)).check()
    reason = FairFace(weights=str(good), detector=str(tmp_path / "none.dat")).available()
    assert "none.dat" in reason and "fairface:detector=PATH" in reason


def test_4_race_labels_get_their_own_parity_groups():
    import pandas as pd

    from bench.metrics.aggregators import Parity
    from bench.report.boards import plan
    from bench.suites import SUITES

    table = pd.DataFrame({"method": ["baseline"], "prompt_id": ["p"], "meta.group": [None],
                          "fairface.race4": ["Asian"], "fairface.race": ["White"]})
    got = [(a.label_column, a.name, a.groups) for a in plan(table, SUITES.get("fairness")).aggregators
           if isinstance(a, Parity)]
    assert got == [("fairface.race4", "race4", list(RACES4)), ("fairface.race", "race", list(RACES))]


def test_bench_run_refuses_a_bad_fairface_file_before_generating(tmp_path, capsys):
    import torchvision

    from bench.cli import main

    net = torchvision.models.resnet34(weights=None)
    net.fc = torch.nn.Linear(512, 7)
    wrong = tmp_path / "res34_fair_align_multi_7_20190809.pt"
    torch.save(net.state_dict(), wrong)
    unnamed = fairface_file(tmp_path / "ff.pt", seed=0)
    args = ["run", "--model", "world", "--methods", "baseline", "--samples", "1", "--steps", "2",
            "--quiet", "--dry-run", "--out", str(tmp_path / "run")]
    for metric, message in ((f"fairface:weights={wrong}", "fc.weight is (7, 512), expected (18, 512)"),
                            (f"fairface:weights={unnamed}", "pass fairface:races=7 or fairface:races=4")):
        assert main([*args, "--metrics", metric]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert main([*args, "--metrics", f"fairface:weights={unnamed},races=7"]) == 0


def test_manifest_fingerprints_weights_detector_and_landmarks(tmp_path):
    import hashlib

    good = fairface_file(tmp_path / "res34_fair_align_multi_4_20190809.pt", seed=0)
    m = FairFace(weights=str(good)).manifest()
    assert m["weights_sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()[:16]
    assert m["races"] == "4"
    assert m["landmarks_sha256"] == "c4b1e9804792707d"  # dlib-models' 5-point predictor
    # face-recognition-models' detector is not the file FairFace ships (be467b1a...): recorded.
    assert (m["detector_sha256"], m["detector_is_fairface_repo_file"]) == ("4cb19393e2fbaf2b", "false")
