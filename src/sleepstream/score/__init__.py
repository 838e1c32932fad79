"""``sleepstream score``: a user's own recordings, days or weeks of them, scored night by night.

The steps, one module each: :mod:`~sleepstream.score.model` (which model, every 30 s epoch
scored with it), :mod:`~sleepstream.score.days` (non-wear, noon-to-noon days, main sleep and
naps, night figures), :mod:`~sleepstream.score.outputs` (tables, JSON, figures),
:mod:`~sleepstream.score.report` (one HTML page) and :mod:`~sleepstream.score.command` (many
inputs, in parallel, skipping finished ones). Reading the inputs is :mod:`sleepstream.data.user`.
"""
