"""Input pipelines: generated 2-D toys, Fashion-MNIST IDX files, TFDS datasets by name; Fashion-MNIST captions
(templated from class names and pixel-measured attributes) and their word-level tokenizer.

Batches are deterministic in ``(seed, step)`` (a resumed run sees the same data) and each JAX process produces
only its own rows of the global batch.
"""
from diffjax.data._captions import (CAPTION_SPLITS, CLASS_NAMES, CLASS_SYNONYMS, Prompt, attribute_measures,
                                    caption_words, captions, class_prompts, heldout_prompts, match_matrix,
                                    measure_attributes, parse_prompt, prompt_matches, sample_captions, text_words)
from diffjax.data._tokenizer import SPECIAL_TOKENS, Tokenizer, caption_tokenizer
from diffjax.data._images import (FASHION_MNIST_DIR, dequantize, from_unit, load_fashion_mnist, load_tfds,
                                  random_flip, to_unit, verify_array_record_shard)
from diffjax.data._pipeline import ImageData, ToyData
from diffjax.data._latents import LatentData, latent_scale_factor
from diffjax.data._captioned import CaptionedData
from diffjax.data._toy import TOY_DATASETS, checkerboard, ring8, swiss_roll, toy_sample, two_moons

__all__ = ["FASHION_MNIST_DIR", "load_fashion_mnist", "load_tfds", "verify_array_record_shard", "to_unit", "from_unit",
           "random_flip", "dequantize", "ToyData", "ImageData", "CaptionedData", "TOY_DATASETS", "ring8", "swiss_roll",
           "checkerboard",
           "two_moons", "toy_sample",
           "CLASS_NAMES", "CLASS_SYNONYMS", "CAPTION_SPLITS", "Prompt", "attribute_measures", "measure_attributes",
           "captions", "sample_captions", "caption_words", "class_prompts", "heldout_prompts", "parse_prompt",
           "prompt_matches",
           "match_matrix",
           "text_words", "Tokenizer", "caption_tokenizer", "SPECIAL_TOKENS", "LatentData", "latent_scale_factor"]
