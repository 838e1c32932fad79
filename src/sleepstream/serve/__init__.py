"""The service: live sleep state for many watches, pushed to whoever may see it.

``sleepstream serve`` runs :func:`~sleepstream.serve.app.create_app` with uvicorn. Devices
send batches of samples or of p(sleep) (:mod:`~sleepstream.serve.schema`); the batches that
arrive together (:mod:`~sleepstream.serve.intake`) are fed to their devices'
:class:`~sleepstream.live.detector.SleepDetector` (:mod:`~sleepstream.serve.feed`,
:mod:`~sleepstream.serve.devices`), their epochs stepped in one batched call, and stored with
the detectors' states in one commit before they are acknowledged
(:mod:`~sleepstream.serve.store`, :mod:`~sleepstream.serve.sqlite`, or
:mod:`~sleepstream.serve.redis_store` for several processes); new results go to the device's
and its groups' subscribers (:mod:`~sleepstream.serve.subscribers`, through
:mod:`~sleepstream.serve.redis_events` with Redis). Tokens: :mod:`~sleepstream.serve.tokens`;
rate limits: :mod:`~sleepstream.serve.limits`.

Needs the ``serve`` extra (``pip install -e ".[serve]"``).
"""
