"""Quality and repetition filters: Gopher's rules (Rae et al. 2021, "Scaling Language Models",
appendix A), applied by datatrove's GopherQualityFilter and GopherRepetitionFilter.

Words are whitespace-separated, as in the Gopher paper. datatrove's default English word
tokenizer (spaCy) makes every punctuation mark a word of its own: under the rule that 80% of
words hold a letter it drops 98% of the bundled Python documentation and 7% of the King James
Bible, and it reads text about 6x slower.

A document with fewer than `min_words` words is not judged: ratios over a handful of words say
nothing (Gopher drops such documents outright; `drop_short` does the same).
"""

from __future__ import annotations

import warnings

from datatrove.data import Document
from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
from datatrove.pipeline.filters.gopher_repetition_filter import GopherRepetitionFilter
from datatrove.utils.word_tokenizers import WordTokenizer

from miniplm.schema.corpus import QualityConfig


class WhitespaceWords(WordTokenizer):
    """Words as the Gopher paper counts them: runs of non-whitespace."""

    def __init__(self) -> None:
        super().__init__("whitespace")

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        raise NotImplementedError("the Gopher rules need words only")

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        raise NotImplementedError("the Gopher rules need words only")


def _rule_names(cfg: QualityConfig) -> dict[str, tuple[str, str]]:
    """datatrove's reason -> (our reason, what the rule says, with the job's threshold)."""
    names = {
        "gopher_below_avg_threshold": ("mean_word_length", f"mean word length below {cfg.min_mean_word_length}"),
        "gopher_above_avg_threshold": ("mean_word_length", f"mean word length above {cfg.max_mean_word_length}"),
        "gopher_too_many_hashes": ("symbol_ratio", f"more than {cfg.max_symbol_word_ratio} '#' per word"),
        "gopher_too_many_ellipsis": ("symbol_ratio", f"more than {cfg.max_symbol_word_ratio} '...' per word"),
        "gopher_too_many_bullets": ("bullet_lines", f"over {cfg.max_bullet_lines} of lines start with a bullet"),
        "gopher_too_many_end_ellipsis": ("ellipsis_lines", f"over {cfg.max_ellipsis_lines} of lines end in '...'"),
        "gopher_below_alpha_threshold": ("non_alpha_words", f"under {cfg.min_alpha_words} of words hold a letter"),
        "gopher_enough_stop_words": ("few_stop_words", f"fewer than {cfg.min_stop_words} distinct stop words"),
        "dup_para_frac": ("duplicate_paragraphs", f"over {cfg.max_duplicate_paragraphs} of paragraphs repeat"),
        "dup_para_char_frac": (
            "duplicate_paragraphs",
            f"repeated paragraphs hold over {cfg.max_duplicate_paragraph_chars} of the characters",
        ),
        "dup_line_frac": ("duplicate_lines", f"over {cfg.max_duplicate_lines} of lines repeat"),
        "dup_line_char_frac": (
            "duplicate_lines",
            f"repeated lines hold over {cfg.max_duplicate_line_chars} of the characters",
        ),
    }
    for n, limit in cfg.max_top_ngram_chars.items():
        names[f"top_{n}_gram"] = ("top_ngram", f"the most frequent {n}-gram covers over {limit} of the characters")
    for n, limit in cfg.max_duplicate_ngram_chars.items():
        names[f"duplicated_{n}_n_grams"] = (
            "duplicate_ngrams",
            f"repeated {n}-grams cover over {limit} of the characters",
        )
    return names


class QualityFilter:
    """Calls datatrove's Gopher filters on one text at a time; says why a text is dropped, or None."""

    def __init__(self, cfg: QualityConfig):
        self.cfg = cfg
        words = WhitespaceWords()
        self.quality = GopherQualityFilter(
            min_doc_words=None,
            max_doc_words=None,  # length is judged here (min_words) and by corpus.max_chars
            min_avg_word_length=cfg.min_mean_word_length,
            max_avg_word_length=cfg.max_mean_word_length,
            max_symbol_word_ratio=cfg.max_symbol_word_ratio,
            max_bullet_lines_ratio=cfg.max_bullet_lines,
            max_ellipsis_lines_ratio=cfg.max_ellipsis_lines,
            max_non_alpha_words_ratio=cfg.min_alpha_words,
            min_stop_words=cfg.min_stop_words,
            language=words,
        )
        self.repetition = GopherRepetitionFilter(
            dup_line_frac=cfg.max_duplicate_lines,
            dup_para_frac=cfg.max_duplicate_paragraphs,
            dup_line_char_frac=cfg.max_duplicate_line_chars,
            dup_para_char_frac=cfg.max_duplicate_paragraph_chars,
            top_n_grams=tuple(sorted(cfg.max_top_ngram_chars.items())),
            dup_n_grams=tuple(sorted(cfg.max_duplicate_ngram_chars.items())),
            language=words,
        )
        self.names = _rule_names(cfg)

    def __call__(self, text: str) -> tuple[str, str] | None:
        """(reason, detail) when a rule drops the text, else None."""
        n_words = len(text.split())
        if n_words < self.cfg.min_words:
            return (
                ("short_document", f"{n_words} words (min_words is {self.cfg.min_words})")
                if self.cfg.drop_short
                else None
            )
        doc = Document(text=text, id="")
        for rules in (self.quality, self.repetition):
            with warnings.catch_warnings():  # a text of symbols only has no mean word length: numpy warns
                warnings.simplefilter("ignore", RuntimeWarning)
                verdict = rules.filter(doc)
            if isinstance(verdict, tuple) and not verdict[0]:
                reason, detail = self.names.get(verdict[1], (verdict[1], "a Gopher rule"))
                return reason, f"{detail} ({verdict[1]})"
        return None
