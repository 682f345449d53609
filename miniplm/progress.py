"""A progress bar that counts items (documents, prompts) and shows a token rate beside them."""

from __future__ import annotations

import time

from tqdm import tqdm


class TokenRate:
    """Items done on the bar, tokens per second beside it."""

    def __init__(self, bar: tqdm):
        self.bar = bar
        self.start = time.perf_counter()
        self.tokens = 0

    def update(self, items: int, tokens: int = 0) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
        self.bar.update(items)
