"""A BART-compatible byte-level BPE tokenizer trained from text.

Real training uses BART's own tokenizer (``facebook/bart-base``). This one exists for models
trained from scratch on a small corpus (the tiny recipe, the quick-start demo) and for tests,
which cannot download BART's vocabulary. Its special ids match BART's: ``<s>``=0, ``<pad>``=1,
``</s>``=2, ``<unk>``=3, so the model's special-token settings hold unchanged.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import BartTokenizerFast

RESERVED_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> BartTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a :class:`BartTokenizerFast`.

    Args:
        texts: training sentences (e.g. the training captions).
        vocab_size: upper bound on the vocabulary size (specials and the 256 byte symbols included).

    Returns:
        A tokenizer that encodes ``"a dog"`` as ``<s> ... </s>`` like BART's.
    """
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    # BART's pre-tokenizer: byte-level, no prefix space added to the first word.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=RESERVED_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    tokenizer = BartTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    assert [tokenizer.convert_tokens_to_ids(t) for t in RESERVED_TOKENS[:4]] == [0, 1, 2, 3]
    return tokenizer
