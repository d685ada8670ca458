# CPU image: the babelrag package and CLI. The LLM runs elsewhere (a vLLM server reached
# through BABELRAG_LLM_BASE_URL); GPU and compose files come later.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app

# CPU torch first, so sentence-transformers does not pull a CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY rag ./rag
COPY ingestion ./ingestion
COPY ui ./ui
COPY configs ./configs
RUN pip install .

# Knowledge bases, their keyword indexes and uploads live in a volume; models are hub ids or folders mounted at /models.
# Web UI + REST: docker run -p 7860:7860 -e BABELRAG_SERVER_TOKEN=... -e BABELRAG_LLM_BASE_URL=... IMAGE serve
ENV BABELRAG_STORE_PATH=/data/chroma BABELRAG_STORE_INDEX_DIR=/data/index BABELRAG_SERVER_UPLOAD_DIR=/data/uploads BABELRAG_SERVER_HOST=0.0.0.0 \
    GRADIO_ANALYTICS_ENABLED=False
VOLUME ["/data"]
EXPOSE 7860
ENTRYPOINT ["babelrag"]
CMD ["--help"]
