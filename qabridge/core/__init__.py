"""What every stage shares: tokenizer, windows, span decoding, the QA pipeline, GGUF keys and reader, hashes.

The stages import downward only: ``core`` <- ``train`` <- ``export`` <- ``bridge`` <- the CLI and
the public API (``tests/test_layout.py`` fails on any import against that flow).
"""
