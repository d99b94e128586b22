"""Bridge stage: tokenisation with offsets, windows, the span head, engines and the HTTP daemon."""
