"""Components for other frameworks, each an optional extra (``pip install 'qabridge[haystack]'``).

Nothing here is imported by ``import qabridge``: each module imports its framework itself.
"""
