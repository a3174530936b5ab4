"""Moved: the recipes' text-to-text glue is `plmkit.recipes.text2text` (builders, corruption steps, heads,
the mixture config) and its held-out scoring is `plmkit.evaluation.text2text`; reading and encoding
records stays in `plmkit.data.text2text`. This module re-exports the names it used to define, so code
written against `plmkit.text2text` keeps working.
"""

from __future__ import annotations

from plmkit.evaluation.text2text import (  # noqa: F401
    check_prefixes,
    evaluate_text2text,
    generate_for_tasks,
    read_text2text,
    task_scores,
)
from plmkit.recipes.text2text import (  # noqa: F401
    CORRUPTIONS,
    NUM_SENTINELS,
    Corruption,
    MixtureConfig,
    Seq2SeqLMHead,
    SourceConfig,
    TiedProjection,
    assign_tasks,
    build_bart,
    build_t5,
    denoising,
    encode_text2text,
    evaluate_seq2seq,
    make_denoising,
    make_span_corruption,
    mixture_batches,
    no_label_set,
    read_mixture,
    span_corruption,
    text2text_head,
    text2text_step,
    unpack,
    write_task_table,
)
