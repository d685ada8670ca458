"""Front ends over the public Python API: the Gradio web UI (``web``), the REST API (``rest``) and
the FastAPI app that serves both (``server``, run by `babelrag serve`)."""
