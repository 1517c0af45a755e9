"""``superneurons serve``: early-exit answers over HTTP, OpenAI-compatible, dynamically batched.

- :mod:`~superneurons.serve.protocol`: parsing and checking requests (OpenAI Chat Completions,
  vLLM's ``/classify``), the replies, and OpenAI's error shape.
- :mod:`~superneurons.serve.batcher`: concurrent requests grouped into one forward, on one
  model thread.
- :mod:`~superneurons.serve.engine`: the loaded model and its classifiers, answering a batch.
- :mod:`~superneurons.serve.app`: the FastAPI application and its endpoints.
"""
