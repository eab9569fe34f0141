"""The held-out-concept protocol (issue 41): a text-conditional base trained with one Fashion-MNIST class entirely
held out learns it from 16 of its training images, by each adaptation method; measured by the feature classifier
(experiments/results/artifacts) against the class's own test images, with what the base forgets.

    python experiments/results/heldout_concept.py --runs /work/runs/heldout            # every stage, resumable
    python experiments/results/heldout_concept.py --runs /work/runs/heldout --table    # the results README's table

Stages, each skipped when its output exists:

1. the base: ``configs/fashion_mnist_text.py`` with ``data.exclude_classes=(K, K2)`` in ``RUNS/base``: K =
   ``--heldout`` (sandal by default, whose synonym "slipper" the adapters bind to the seen noun "sneaker":
   configs/fashion_mnist_dreambooth.py) is the concept every method learns; K2 = ``--second`` (bag) is held out too,
   only as the second concept of the two-LoRA combination (its prompt "a purse");
2. the concepts: 16 training images of each (a seeded draw) in ``RUNS/concept.npz`` and ``RUNS/second.npz``;
3. each method of ``METHODS`` (``python -m diffjax.main --config ... --mode train`` in ``RUNS/METHOD``; wall time
   recorded), and ``lora_second`` (every kernel, on the second concept);
4. samples (UniPC 25, guidance 2): the concept's prompts (``concept_prompts``, ``--num-concept`` samples) and the
   eight trained classes' prompts (``--num-other``) from the base and from every adapted model, LoRA at adapter
   scales 0 / 0.5 / 1, and ``lora_all`` with ``lora_second`` merged (``sampling.extra_adapters``), sampled for both
   concepts' prompts;
5. scores: **concept accuracy** (the fraction the classifier assigns to class K) and the Frechet distance to class
   K's 1000 test images; **forgetting**: the eight prompts' intended-class accuracy and their Frechet distance to
   those classes' test images, adapted against base; trainable parameters (and their fraction of the base's),
   optimizer-state bytes (``adapter.json``) and adaptation time. Real training images at the same n are the floor.

Rows go to ``artifacts/heldout_concept.jsonl`` (one per model and scale, with the commands); ``--table`` prints the
table; the best method's concept samples are copied to ``artifacts/samples/heldout_METHOD_concept.npz`` (arrays
``x``, ``labels`` = K, ``prompts``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evidence  # noqa: E402
from fmnist_budget import overrides_to_flags as flags, run  # noqa: E402  (run: a command's wall seconds)

BASE_CONFIG = "configs/fashion_mnist_text.py"
DREAMBOOTH = "configs/fashion_mnist_dreambooth.py"  # adapter_of(the text base): its prompt "a slipper sneaker"
# the UNet's attention projections (self- and cross-attention q, k, v, out of every spatial transformer)
ATTENTION = ("backbone/*attn*/[qkv]/kernel", "backbone/*attn*/out/kernel")
# name -> (config, overrides, the words that name the concept in its prompts)
METHODS = {
    "lora_attention": (DREAMBOOTH, {"adapt.method": "lora", "adapt.targets": ATTENTION}, "slipper sneaker"),
    "lora_all": (DREAMBOOTH, {"adapt.method": "lora"}, "slipper sneaker"),
    "dreambooth_lora": (DREAMBOOTH, {}, "slipper sneaker"),
    "dreambooth_full": (DREAMBOOTH, {"adapt.dreambooth_lora": False, "adapt.lr": 1e-4}, "slipper sneaker"),
    "textual_inversion": ("configs/fashion_mnist_textual_inversion.py", {}, "zwx"),
}
SECOND = ("lora_second", {"adapt.method": "lora", "adapt.prompt": "a purse"}, "purse")
LORA_SCALES = (0.0, 0.5, 1.0)
SAMPLER = {"sampling.method": "unipc", "sampling.num_steps": 25, "sampling.guidance_scale": 2.0}


def concept_prompts(words: str) -> list:
    """The prompts a concept is sampled for: bare, with each shade and size word, and in another frame."""
    return [f"a {words}", f"a dark {words}", f"a light {words}", f"a small {words}", f"a large {words}",
            f"a photo of a {words}"]


def other_prompts(heldout) -> list:
    from diffjax.data import class_prompts
    return [p for k, p in enumerate(class_prompts()) if k not in heldout]


class Protocol:
    def __init__(self, args):
        self.args, self.k, self.k2 = args, args.heldout, args.second
        if self.k == self.k2:
            raise SystemExit(f"--heldout and --second must be two classes, got {self.k} twice")
        self.runs = os.path.abspath(args.runs)
        os.makedirs(os.path.join(self.runs, "samples"), exist_ok=True)
        self.base = os.path.join(self.runs, "base")
        self.base_overrides = {"data.exclude_classes": (self.k, self.k2), "seed": args.seed}
        self.rows_path = os.path.join(evidence.ARTIFACTS, "heldout_concept.jsonl")
        self.scorer = evidence.Scorer()

    # ---------------------------------------------------------------- training

    def train_base(self):
        cmd = [sys.executable, "-m", "diffjax.main", "--config", BASE_CONFIG, "--workdir", self.base,
               "--noprogress"] + flags(self.base_overrides)
        run(cmd, self.base + ".log")  # trains, resumes, or finds the run finished

    def concept_images(self, label, name):
        path = os.path.join(self.runs, f"{name}.npz")
        if not os.path.exists(path):
            from diffjax.data import load_fashion_mnist
            images, labels = load_fashion_mnist("train")
            idx = np.sort(np.random.default_rng(self.args.seed).choice(np.flatnonzero(np.asarray(labels) == label),
                                                                       self.args.num_images, replace=False))
            np.savez(path, x=np.asarray(images)[idx], index=idx)
        return path

    def adapt_flags(self, overrides, images):
        return flags({**self.base_overrides, **overrides, "adapt.base_workdir": self.base, "adapt.images": images})

    def train_method(self, name, config, overrides, images):
        wd = os.path.join(self.runs, name)
        done = os.path.join(wd, "adapt_time.json")
        if os.path.exists(done):
            return json.load(open(done))
        cmd = [sys.executable, "-m", "diffjax.main", "--config", config, "--workdir", wd, "--noprogress"]
        cmd += self.adapt_flags(overrides, images)
        seconds = run(cmd, wd + ".log")
        record = {"adapt_wall_s": round(seconds, 1), "command": " ".join(cmd[1:])}
        with open(done, "w") as f:
            json.dump(record, f)
        return record

    # ---------------------------------------------------------------- sampling

    def sample(self, name, config, overrides, prompts, n, tag, *, adapted=True, scale=1.0):
        """``n`` samples cycling ``prompts`` into ``RUNS/samples/NAME_TAG.npz``; returns (path, command)."""
        out = os.path.join(self.runs, "samples", f"{name}_{tag}.npz")
        prompt_file = os.path.join(self.runs, f"prompts_{name}_{tag}.txt")
        with open(prompt_file, "w") as f:
            f.write("\n".join(prompts) + "\n")
        wd = os.path.join(self.runs, name) if adapted else self.base
        ov = {**SAMPLER, "sampling.prompt_file": prompt_file, "sampling.num_samples": n,
              "sampling.batch_size": n, "seed": self.args.sample_seed}
        if adapted:
            ov["sampling.adapter_scale"] = scale
            cmd = self.adapt_flags({**overrides, **ov}, self.concept_images(self.k, "concept"))
        else:
            cmd = flags({**self.base_overrides, **ov})
        cmd = [sys.executable, "-m", "diffjax.main", "--config", config, "--workdir", wd, "--mode", "sample",
               "--noprogress"] + cmd
        if not os.path.exists(out):
            t0 = time.time()
            run(cmd, os.path.join(self.runs, name + "_sample.log"))
            folder = os.path.join(wd, "samples")
            written = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".npz")
                       and os.path.getmtime(os.path.join(folder, f)) >= t0 - 1]
            if len(written) != 1:
                raise SystemExit(f"expected one new sample file in {folder}, found {written}")
            shutil.copyfile(written[0], out)
        return out, " ".join(cmd[1:])

    # ---------------------------------------------------------------- scoring

    def reference(self, classes):
        """The classifier-feature statistics of the test images of ``classes``."""
        from diffjax.data import load_fashion_mnist
        from diffjax.eval import metrics
        images, labels = load_fashion_mnist("test")
        keep = np.isin(np.asarray(labels), classes)
        return metrics.feature_statistics(self.scorer.features(np.asarray(images)[keep])[0])

    def frechet(self, images, ref):
        from diffjax.eval import metrics
        return float(metrics.frechet_distance(*metrics.feature_statistics(self.scorer.features(images)[0]), *ref))

    def score_concept(self, path, label, ref, prefix="concept") -> dict:
        """The fraction of the set the classifier assigns to ``label`` and its distance to that class."""
        x = evidence.load_images(path)
        logits = self.scorer.features(x)[1]
        return {f"{prefix}_accuracy": round(float(np.mean(logits.argmax(-1) == label)), 4),
                f"{prefix}_fd": round(self.frechet(x, ref), 3), f"num_{prefix}": int(len(x))}

    def score_other(self, path, ref) -> dict:
        """The trained classes' prompts: intended-class accuracy and the distance to those classes."""
        from diffjax.eval.prompt_following import class_accuracy
        x = evidence.load_images(path)
        with np.load(path) as z:
            labels = z["labels"]
        return dict(other_accuracy=round(class_accuracy(self.scorer.features(x)[1], labels), 4),
                    other_fd=round(self.frechet(x, ref), 3), num_other=int(len(x)))

    def floor(self, refs) -> dict:
        """Real training images at the same n (not the concepts' 16): the distances' floor."""
        from diffjax.data import load_fashion_mnist
        images, labels = load_fashion_mnist("train")
        images, labels = np.asarray(images), np.asarray(labels)
        rng = np.random.default_rng(self.args.seed + 1)
        with np.load(self.concept_images(self.k, "concept")) as z:
            taught = z["index"]
        pool = np.setdiff1d(np.flatnonzero(labels == self.k), taught)
        concept = rng.choice(pool, self.args.num_concept, replace=False)
        other = rng.choice(np.flatnonzero(~np.isin(labels, (self.k, self.k2))), self.args.num_other, replace=False)
        right = self.scorer.features(images[other])[1].argmax(-1) == labels[other]
        return dict(concept_accuracy=round(float(np.mean(self.scorer.features(images[concept])[1].argmax(-1)
                                                         == self.k)), 4),
                    concept_fd=round(self.frechet(images[concept], refs["concept"]), 3),
                    other_accuracy=round(float(np.mean(right)), 4),
                    other_fd=round(self.frechet(images[other], refs["other"]), 3))

    # ---------------------------------------------------------------- the protocol

    def rows(self) -> list:
        if not os.path.exists(self.rows_path):
            return []
        with open(self.rows_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def record(self, row):
        row = {"heldout": self.k, "date": time.strftime("%Y-%m-%d"), **row}
        with open(self.rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def adapted_row(self, name, scale, m, adapter, trained, base_row, commands) -> dict:
        return {"model": name, "adapter_scale": scale, **m,
                "forgetting_accuracy": round(base_row["other_accuracy"] - m["other_accuracy"], 4),
                "forgetting_fd": round(m["other_fd"] - base_row["other_fd"], 3),
                "trainable_params": adapter["trainable_params"], "base_params": adapter["base_params"],
                "trainable_fraction": round(adapter["trainable_params"] / adapter["base_params"], 6),
                "optimizer_state_bytes": adapter.get("optimizer_state_bytes"),
                "adapt_wall_s": trained["adapt_wall_s"], "commands": [trained["command"], *commands]}

    def main(self):
        a = self.args
        self.train_base()
        images = self.concept_images(self.k, "concept")
        second = self.concept_images(self.k2, "second")
        refs = {"concept": self.reference([self.k]), "second": self.reference([self.k2]),
                "other": self.reference([c for c in range(10) if c not in (self.k, self.k2)])}
        have = {(r["model"], r.get("adapter_scale")) for r in self.rows()}
        others = other_prompts((self.k, self.k2))
        if ("real training images", None) not in have:
            self.record({"model": "real training images", "adapter_scale": None, **self.floor(refs)})
        if ("base", None) not in have:
            c, cc = self.sample("base", BASE_CONFIG, {}, concept_prompts("slipper sneaker"), a.num_concept,
                                "concept", adapted=False)
            o, oc = self.sample("base", BASE_CONFIG, {}, others, a.num_other, "other", adapted=False)
            self.record({"model": "base", "adapter_scale": None, **self.score_concept(c, self.k, refs["concept"]),
                         **self.score_other(o, refs["other"]), "commands": [cc, oc]})
        base_row = next(r for r in self.rows() if r["model"] == "base")
        for name, (config, overrides, words) in METHODS.items():
            trained = self.train_method(name, config, overrides, images)
            adapter = json.load(open(os.path.join(self.runs, name, "adapter.json")))
            for scale in (LORA_SCALES if "kernels" in adapter else (1.0,)):  # a LoRA: its strength too
                if (name, scale) in have:
                    continue
                c, cc = self.sample(name, config, overrides, concept_prompts(words), a.num_concept,
                                    f"concept_scale{scale:g}", scale=scale)
                o, oc = self.sample(name, config, overrides, others, a.num_other, f"other_scale{scale:g}",
                                    scale=scale)
                m = {**self.score_concept(c, self.k, refs["concept"]), **self.score_other(o, refs["other"])}
                self.record(self.adapted_row(name, scale, m, adapter, trained, base_row, [cc, oc]))
        # two LoRAs in one model: lora_all (the concept) with lora_second (the second concept) merged on top
        name2, overrides2, words2 = SECOND
        trained2 = self.train_method(name2, DREAMBOOTH, overrides2, second)
        combined = "lora_all + lora_second"
        if (combined, 1.0) not in have:
            config, overrides, words = METHODS["lora_all"]
            both = {**overrides, "sampling.extra_adapters": (os.path.join(self.runs, name2),)}
            m, commands = {}, []
            for tag, prompts, n in (("concept", concept_prompts(words), a.num_concept),
                                    ("second", concept_prompts(words2), a.num_concept),
                                    ("other", others, a.num_other)):
                path, cmd = self.sample("lora_all", config, both, prompts, n, f"{tag}_plus_second")
                commands.append(cmd)
                m.update(self.score_other(path, refs["other"]) if tag == "other" else
                         self.score_concept(path, self.k if tag == "concept" else self.k2, refs[tag], tag))
            adapter = json.load(open(os.path.join(self.runs, "lora_all", "adapter.json")))
            adapter2 = json.load(open(os.path.join(self.runs, name2, "adapter.json")))
            trained = self.train_method("lora_all", config, overrides, images)  # recorded above: read back
            both_trained = {"adapt_wall_s": trained["adapt_wall_s"] + trained2["adapt_wall_s"],
                            "command": trained["command"] + " ; " + trained2["command"]}
            row = self.adapted_row(combined, 1.0, m, adapter, both_trained, base_row, commands)
            row["trainable_params"] += adapter2["trainable_params"]
            row["trainable_fraction"] = round(row["trainable_params"] / row["base_params"], 6)
            self.record(row)
        self.copy_best()

    def copy_best(self):
        """The concept samples of the best method at full strength (the highest concept accuracy among those
        forgetting under 5 points, else the highest) into the artifacts, with the labels the prompts intend."""
        rows = [r for r in self.rows() if r["model"] in METHODS and r["adapter_scale"] in (1.0, None)]
        if not rows:
            return
        kept = [r for r in rows if r["forgetting_accuracy"] < 0.05] or rows
        best = max(kept, key=lambda r: r["concept_accuracy"])
        src = os.path.join(self.runs, "samples", f"{best['model']}_concept_scale1.npz")
        with np.load(src) as z:
            x, prompts = z["x"], z["prompts"]
        out = os.path.join(evidence.ARTIFACTS, "samples", f"heldout_{best['model']}_concept.npz")
        np.savez_compressed(out, x=x, prompts=prompts, labels=np.full(len(x), self.k, np.int32))
        print(f"best: {best['model']} -> {out}", flush=True)


def table(rows_path):
    with open(rows_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print("| model | adapter scale | concept accuracy | concept FD | other classes' accuracy (forgetting) | "
          "other FD (change) | trainable params (fraction) | optimizer state | adaptation time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        forget = f" ({-100 * r['forgetting_accuracy']:+.1f} pts)" if "forgetting_accuracy" in r else ""
        dfd = f" ({r['forgetting_fd']:+.2f})" if "forgetting_fd" in r else ""
        params = (f"{r['trainable_params']:,} ({100 * r['trainable_fraction']:.2f}%)" if "trainable_params" in r
                  else "-")
        opt = f"{r['optimizer_state_bytes'] / 2 ** 20:.2f} MiB" if r.get("optimizer_state_bytes") else "-"
        wall = f"{r['adapt_wall_s']:.0f} s" if "adapt_wall_s" in r else "-"
        print(f"| {r['model']} | {r['adapter_scale'] if r['adapter_scale'] is not None else '-'} | "
              f"{r['concept_accuracy']:.3f} | {r['concept_fd']:.2f} | {r['other_accuracy']:.3f}{forget} | "
              f"{r['other_fd']:.2f}{dfd} | {params} | {opt} | {wall} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="/work/runs/heldout")
    p.add_argument("--heldout", type=int, default=5, help="the concept, held out of the base (5: sandal)")
    p.add_argument("--second", type=int, default=8, help="the second LoRA's concept, held out too (8: bag)")
    p.add_argument("--num-images", type=int, default=16, help="images of the concept the methods learn from")
    p.add_argument("--num-concept", type=int, default=300, help="samples of the concept's prompts per model")
    p.add_argument("--num-other", type=int, default=450, help="samples of the other classes' prompts per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-seed", type=int, default=200)
    p.add_argument("--table", action="store_true")
    args = p.parse_args()
    if args.table:
        table(os.path.join(evidence.ARTIFACTS, "heldout_concept.jsonl"))
        return
    Protocol(args).main()


if __name__ == "__main__":
    main()
