"""The service: live sleep state for many watches, pushed to whoever may see it.

``sleepstream serve`` runs :func:`~sleepstream.serve.app.create_app` with uvicorn. Devices
send batches of samples (:mod:`~sleepstream.serve.schema`), each fed to the device's
:class:`~sleepstream.live.detector.SleepDetector` (:mod:`~sleepstream.serve.feed`,
:mod:`~sleepstream.serve.devices`) and stored with its detector state before it is
acknowledged (:mod:`~sleepstream.serve.store`, :mod:`~sleepstream.serve.sqlite`); new
results go to the device's subscribers (:mod:`~sleepstream.serve.subscribers`). Tokens:
:mod:`~sleepstream.serve.tokens`.

Needs the ``serve`` extra (``pip install -e ".[serve]"``).
"""
