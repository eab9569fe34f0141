"""Text-conditional diffusion models (``text.conditioning``): the network (a :class:`~diffjax.nets.TextConditional`
over the backbone of ``model.name`` with ``context_block=text.conditioning``), its captioned training data, its
pre-trained frozen text encoder (``text.encoder_workdir``: a ``config.task="clip"`` workdir) and the prompts of
``sampling.prompt`` / ``sampling.prompt_file`` (also those of CLIP guidance, :mod:`~diffjax.config_lib._clip_guidance`).

The condition ``y`` is a batch of caption token ids ``(B, text.max_length)``: it takes the class label's place in the
loss, the score function and classifier-free guidance, whose null condition is the empty caption."""
from __future__ import annotations

import numpy as np

from diffjax.config_lib._names import _check_int, _choice, _nets, check_number

# text.conditioning -> the backbone's context_block ("" : not text-conditional)
TEXT_CONDITIONINGS = ("", "cross_attention", "mmdit")
TEXT_DATASETS = ("fashion_mnist", "fashion_mnist_tfds")  # the caption grammar names Fashion-MNIST's classes


def text_conditional(config) -> bool:
    """Whether ``config`` trains a text-conditional model (``text.conditioning`` set)."""
    return bool(config.get("text", {}).get("conditioning", ""))


def prompted(config) -> bool:
    """Whether samples follow prompts: a text-conditional model, or CLIP guidance (``sampling.clip_scale > 0``, whose
    prompts go to the guiding CLIP's text tower only, :mod:`~diffjax.config_lib._clip_guidance`)."""
    return text_conditional(config) or config.sampling.get("clip_scale", 0.0) > 0


def _prompt_length(config):
    """``(field, n)``: prompts are encoded to ``n`` tokens, ``text.max_length`` of a text-conditional model, else
    the guiding CLIP's ``clip.max_length``."""
    if text_conditional(config):
        return "text.max_length", int(config.text.max_length)
    from diffjax.config_lib._clip_guidance import clip_prompt_length
    return "clip.max_length of sampling.clip_workdir", clip_prompt_length(config)


def adapter_words(config) -> tuple:
    """The words a textual-inversion adapter adds to the vocabulary: ``(adapt.new_word,)`` for ``config.task="adapt"``
    with ``adapt.method="textual_inversion"``, else ``()``. ``ValueError`` for a word the vocabulary already has or
    that is not one word."""
    a = config.get("adapt", None)
    if config.get("task", "") != "adapt" or a is None or a.get("method", "") != "textual_inversion":
        return ()
    from diffjax.config_lib._clip import clip_tokenizer
    from diffjax.data import text_words
    word = a.get("new_word", "")
    if not isinstance(word, str) or text_words(word) != [word]:
        raise ValueError(f"adapt.new_word must be one lower-case word (letters, digits, hyphens) for textual inversion "
                         f"to add to the vocabulary, got {word!r}")
    if word in clip_tokenizer(config).words:
        raise ValueError(f"adapt.new_word={word!r} is already in the vocabulary; textual inversion needs a new word "
                         f"(e.g. 'zwx'), not one of {list(clip_tokenizer(config).words)}")
    return (word,)


def text_tokenizer(config):
    """The caption grammar's tokenizer (:func:`diffjax.data.caption_tokenizer`), extended by
    :func:`adapter_words` (their ids follow the grammar's)."""
    from diffjax.config_lib._clip import clip_tokenizer
    words = adapter_words(config)
    if not words:
        return clip_tokenizer(config)
    from diffjax.data import Tokenizer
    return Tokenizer(clip_tokenizer(config).words + words)


def _text_encoder(config):
    t = config.text
    if t.encoder_workdir:
        from diffjax.config_lib._clip import load_clip
        return load_clip(t.encoder_workdir)[1].text_encoder.clone(vocab_size=text_tokenizer(config).vocab_size)
    return _nets().TextEncoder(vocab_size=text_tokenizer(config).vocab_size, max_length=int(t.max_length),
                               width=int(t.width), depth=int(t.depth), num_heads=int(t.num_heads), pool=t.pool)


def text_model(config, backbone):
    """The :class:`~diffjax.nets.TextConditional` of ``config.text`` around ``backbone``."""
    t = config.text
    return _nets().TextConditional(_text_encoder(config), backbone, max_length=int(t.max_length),
                                   freeze_text=bool(t.encoder_workdir))


def null_condition(config) -> np.ndarray:
    """The empty caption's ids ``(text.max_length,)``: classifier-free guidance's null condition."""
    tok = text_tokenizer(config)
    return tok.encode("", max_length=int(config.text.max_length))[0][0]


def captioned_dataset(config, data, *, process_index=None):
    """``data`` with one training caption per image and step as ``"y"`` (:class:`~diffjax.data.CaptionedData`,
    caption dropout ``text.caption_dropout``)."""
    import jax
    from diffjax.data import CaptionedData
    return CaptionedData(data, text_tokenizer(config), max_length=int(config.text.max_length),
                         dropout=float(config.text.caption_dropout), seed=int(config.seed),
                         process_index=jax.process_index() if process_index is None else process_index)


def with_pretrained_text(config, create):
    """``create(key) -> TrainState`` with the text encoder's parameters (in ``params``, ``ema_params`` and the power
    EMAs) replaced by those of the CLIP run in ``text.encoder_workdir``; ``create`` itself when that is empty."""
    if not config.text.get("encoder_workdir", "") or not text_conditional(config):
        return create
    from diffjax.config_lib._clip import load_clip
    pretrained = load_clip(config.text.encoder_workdir)[2]["text_encoder"]

    def with_text(params):
        return {**params, "text_encoder": pretrained}

    def create_pretrained(key):
        s = create(key)
        return s.replace(params=with_text(s.params), ema_params=with_text(s.ema_params),
                         phema=tuple(with_text(p) for p in s.phema))

    return create_pretrained


def sampling_prompts(config) -> tuple:
    """The prompts samples cycle through: ``sampling.prompt``, else the lines of ``sampling.prompt_file`` (blank
    lines skipped), else one class prompt per class (:func:`diffjax.data.class_prompts`). Each prompt's words must
    be in the tokenizer's vocabulary and fit ``text.max_length``; ``ValueError`` naming the field otherwise."""
    from diffjax.data import class_prompts
    s = config.sampling
    if s.prompt and s.prompt_file:
        raise ValueError(f"sampling.prompt={s.prompt!r} and sampling.prompt_file={s.prompt_file!r} are alternatives; "
                         f"set one")
    if s.prompt:
        field, prompts = "sampling.prompt", (s.prompt,)
    elif s.prompt_file:
        field = f"sampling.prompt_file={s.prompt_file!r}"
        try:
            with open(s.prompt_file) as f:
                prompts = tuple(line.strip() for line in f if line.strip())
        except OSError as e:
            raise ValueError(f"{field} cannot be read: {e}") from None
        if not prompts:
            raise ValueError(f"{field} holds no prompt (one prompt per line, blank lines are skipped)")
    else:
        return class_prompts()
    tok, (length_field, n) = text_tokenizer(config), _prompt_length(config)
    for p in prompts:
        unknown = tok.unknown_words(p)
        if unknown:
            raise ValueError(f"{field}: prompt {p!r} has words outside the vocabulary: {unknown}; allowed words: "
                             f"{list(tok.words)}")
        try:
            tok.encode(p, max_length=n)
        except ValueError as e:
            raise ValueError(f"{field} ({length_field}={n}): {e}") from None
    return prompts


def prompt_ids(config) -> np.ndarray:
    """``(P, n)`` token ids of :func:`sampling_prompts`: ``n`` is ``text.max_length``, or under CLIP guidance the
    guiding CLIP's ``clip.max_length``."""
    return text_tokenizer(config).encode(sampling_prompts(config), max_length=_prompt_length(config)[1])[0]


def prompt_record(config, batch_sizes) -> dict:
    """For samples drawn in batches of ``batch_sizes``, each batch cycling through the prompts from the first:
    ``{"prompts": str array, "labels": the class each prompt names (-1: none, :func:`diffjax.data.parse_prompt`)}``;
    ``{}`` for unprompted samples (neither a text-conditional model nor CLIP guidance)."""
    if not prompted(config):
        return {}
    from diffjax.data import parse_prompt
    prompts = sampling_prompts(config)
    idx = np.concatenate([np.arange(n) % len(prompts) for n in batch_sizes])
    labels = np.array([-1 if parse_prompt(p).label is None else parse_prompt(p).label for p in prompts], np.int32)
    return {"prompts": np.asarray(prompts)[idx], "labels": labels[idx]}


def validate_text(config) -> None:
    """``text.*`` and the prompts of ``sampling.*``: ``ValueError`` naming the field."""
    t, s, d = config.text, config.sampling, config.data
    _choice("text.conditioning", t.conditioning, TEXT_CONDITIONINGS)
    if not t.conditioning:
        if (s.prompt or s.prompt_file) and not prompted(config):
            raise ValueError("sampling.prompt / sampling.prompt_file need a text-conditional model "
                             f"(text.conditioning one of {list(TEXT_CONDITIONINGS[1:])}) or CLIP guidance "
                             "(sampling.clip_scale > 0), got text.conditioning='' and sampling.clip_scale=0")
        return  # CLIP guidance's prompts: checked by validate_clip_guidance
    _choice("data.dataset", d.dataset, TEXT_DATASETS)
    if d.num_classes:
        raise ValueError(f"text.conditioning={t.conditioning!r} conditions on captions instead of class labels: set "
                         f"data.num_classes=0, got {d.num_classes}")
    check_number("text.caption_dropout", t.caption_dropout, 0.0, 1.0)
    from diffjax.config_lib._clip import _longest_caption
    longest = _longest_caption()
    if _check_int("text.max_length", t.max_length, 2) < longest + 2:
        raise ValueError(f"text.max_length must be >= {longest + 2} (the longest caption has {longest} words, plus "
                         f"BOS and EOS), got {t.max_length}")
    if t.encoder_workdir:
        from diffjax.config_lib._clip import load_clip
        load_clip(t.encoder_workdir)  # names the workdir and what it lacks
        o = config.optim
        if o.optimizer == "adamw" and o.weight_decay > 0:
            raise ValueError(f"text.encoder_workdir (a frozen text encoder) needs optim.weight_decay=0 (weight decay "
                             f"would change the frozen parameters), got {o.weight_decay}")
    sampling_prompts(config)
