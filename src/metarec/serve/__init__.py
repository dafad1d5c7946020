"""The web service: ``create_app(run_dir or Predictor)`` builds a FastAPI app (no globals).

Needs the ``serve`` extra (fastapi, uvicorn); importing :mod:`metarec.serve.app` without it
fails with a hint, the rest of metarec does not need it.
"""
