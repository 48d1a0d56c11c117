"""What the algorithm families share: one place for image and audio decoding, the
training loop's optimizer/AMP/step, metrics, weights lookup, devices and prefetching,
and resource limits. Families import these modules; they never import each other.

Importing this package imports nothing: ``limits`` is pure Python (spec packages use
it), the others import numpy, PIL or torch when a model runs.
"""
