"""Prompt following (issue 40's measurement): real test images with their own class and attributes stated follow
their prompts exactly as far as the pixel rules go and as far as the classifier is right about the class; stated
opposites fail; the fixed held-out prompt set covers every class and attribute combination in held-out phrasings."""
import itertools
import os

import numpy as np
import pytest

from diffjax import data as ddata
from diffjax.eval import feature_classifier as fc
from diffjax.eval.prompt_following import class_accuracy, prompt_following

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(REPO, "experiments", "results", "artifacts")


@pytest.fixture(scope="module")
def test_images():
    """The first 400 test images, their labels and the committed classifier's logits."""
    images, labels = ddata.load_fashion_mnist("test")
    images, labels = np.asarray(images[:400]), np.asarray(labels[:400])
    params = fc.load_classifier_params(os.path.join(ARTIFACTS, "classifier_params.npz"))
    return images, labels, fc.classifier_logits(params, images)


def _own_prompt(label, shade, size, opposite=False):
    """A held-out phrasing stating the class and whichever attributes the image has (their opposites with
    ``opposite``)."""
    s, z = (-shade, -size) if opposite else (shade, size)
    return ddata.captions(int(label), int(s), int(z), split="heldout")[-1]  # the last: every stated word kept


def test_real_images_follow_their_own_prompts(test_images):
    images, labels, logits = test_images
    shade, size = ddata.measure_attributes(images)
    prompts = [_own_prompt(*a) for a in zip(labels, shade, size)]
    got = prompt_following(images, logits, prompts)
    right = logits.argmax(-1) == labels
    assert got["class_accuracy"] == pytest.approx(right.mean()) and 0.8 < got["class_accuracy"] < 1.0
    assert got["shade_accuracy"] == 1.0 and got["size_accuracy"] == 1.0  # the rules the captions are written by
    assert got["prompt_accuracy"] == pytest.approx(right.mean())  # only the class can miss
    assert got["num_class"] == 400
    assert got["num_shade"] == int((shade != 0).sum()) and got["num_size"] == int((size != 0).sum())
    assert 0 < got["num_shade"] < 400 and 0 < got["num_size"] < 400  # some prompts leave an attribute out


def test_opposite_attributes_and_wrong_classes_fail(test_images):
    images, labels, logits = test_images
    shade, size = ddata.measure_attributes(images)
    stated = (shade != 0) & (size != 0)
    images, labels, logits, shade, size = (a[stated] for a in (images, labels, logits, shade, size))
    opposite = [_own_prompt(*a, opposite=True) for a in zip(labels, shade, size)]
    got = prompt_following(images, logits, opposite)
    assert got["shade_accuracy"] == 0.0 and got["size_accuracy"] == 0.0 and got["prompt_accuracy"] == 0.0
    wrong = [_own_prompt((k + 1) % 10, s, z) for k, s, z in zip(labels, shade, size)]
    got = prompt_following(images, logits, wrong)
    assert got["class_accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == (labels + 1) % 10))
    assert got["class_accuracy"] < 0.1 and got["shade_accuracy"] == 1.0


def test_class_accuracy_by_hand_and_unstated_fields():
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    assert class_accuracy(logits, np.array([0, 2, 2, -1])) == pytest.approx(2 / 3)
    assert class_accuracy(logits, np.array([-1, -1, -1, -1])) is None
    with pytest.raises(ValueError, match=r"labels must be < the classifier's 3 classes"):
        class_accuracy(logits, np.array([0, 3, 0, 0]))
    with pytest.raises(ValueError, match=r"logits must be \(N, K\) and labels \(N,\)"):
        class_accuracy(logits, np.array([0, 1]))
    images = np.zeros((2, 28, 28, 1), np.uint8)
    got = prompt_following(images, np.zeros((2, 10)), ["", "on a black background"])  # states nothing
    assert got == {"class_accuracy": None, "shade_accuracy": None, "size_accuracy": None, "prompt_accuracy": None,
                   "num_class": 0, "num_shade": 0, "num_size": 0}
    with pytest.raises(ValueError, match=r"images, logits and prompts must be as many, got 2, 2 and 1"):
        prompt_following(images, np.zeros((2, 10)), ["a bag"])


def test_heldout_prompt_set():
    prompts = ddata.heldout_prompts()
    assert len(prompts) == len(set(prompts)) == 100
    parsed = [ddata.parse_prompt(p) for p in prompts]
    heldout = {c for k, s, z in itertools.product(range(10), (-1, 0, 1), (-1, 0, 1))
               for c in ddata.captions(k, s, z, split="heldout")}
    train = {c for k, s, z in itertools.product(range(10), (-1, 0, 1), (-1, 0, 1))
             for c in ddata.captions(k, s, z, split="train")}
    assert set(prompts) <= heldout and not set(prompts) & train
    for k in range(10):  # class-major, every attribute combination once plus a second bare prompt
        block = parsed[10 * k:10 * k + 10]
        assert {p.label for p in block} == {k}
        assert sorted((p.shade or 0, p.size or 0) for p in block[:9]) == sorted(
            itertools.product((-1, 0, 1), (-1, 0, 1)))
        assert block[9] == ddata.Prompt(k, None, None) and prompts[10 * k + 9] != prompts[10 * k]
    assert ddata.heldout_prompts(split="train")[4] == "a small dark t-shirt"  # frame 4 % 4: the bare phrase
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'heldout'\), got 'val'"):
        ddata.heldout_prompts(split="val")


def test_samples_know_what_they_were_drawn_for():
    """Run.drawn_for (--mode sample's npz arrays, --mode eval's prompt following): samples come in batches, each
    cycling the labels / prompts from the first (Run.sampling_condition)."""
    from types import SimpleNamespace
    from configs import fashion_mnist_cfg, fashion_mnist_text
    from diffjax.run import Run

    def drawn_for(config, sizes, label_classes=0, prompted=False):
        fake = SimpleNamespace(config=config, label_classes=label_classes, prompt_ids=() if prompted else None)
        return Run.drawn_for(fake, sizes)

    cfg = fashion_mnist_cfg.get_config()
    got = drawn_for(cfg, [12, 12, 1], label_classes=10)
    assert got.keys() == {"labels"} and got["labels"].dtype == np.int32
    np.testing.assert_array_equal(got["labels"], np.r_[np.arange(12) % 10, np.arange(12) % 10, [0]])
    assert drawn_for(cfg, [12, 12, 1]) == {}
    text = fashion_mnist_text.get_config()
    text.sampling.prompt = "a dark bag"
    got = drawn_for(text, [2, 2, 1], prompted=True)
    assert got["prompts"].tolist() == ["a dark bag"] * 5 and got["labels"].tolist() == [8] * 5
    text.sampling.prompt = ""
    prompts = drawn_for(text, [12, 2], prompted=True)["prompts"].tolist()
    classes = ddata.class_prompts()
    assert prompts == [classes[i % 10] for i in range(12)] + list(classes[:2])
