"""``fcnseg serve``: a web page and HTTP API around one model (Starlette on uvicorn).

``create_app(model, meta, settings=ServeSettings(...))`` builds the ASGI app; ``load_serving_model(checkpoint)``
loads a checkpoint (or the shipped model) ready for it. ``fcnseg.serve.segment`` holds the HTTP-free parts.
"""

from fcnseg.serve.app import ServeSettings, create_app, load_serving_model

__all__ = ["ServeSettings", "create_app", "load_serving_model"]
